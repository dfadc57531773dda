//! The SendTargets text request (RFC 7143 Appendix C).

use std::net::SocketAddr;

use crate::text::TextBuilder;
use crate::Registry;

/// Formats a portal as TargetAddress wants it: IPv6 in brackets.
pub fn target_address(portal: SocketAddr, tpgt: u16) -> String {
    match portal {
        SocketAddr::V4(a) => format!("{}:{},{}", a.ip(), a.port(), tpgt),
        SocketAddr::V6(a) => format!("[{}]:{},{}", a.ip(), a.port(), tpgt),
    }
}

/// Answers `SendTargets=<value>`. "All" lists every target the initiator
/// may see; a name lists that target if visible; an empty value lists the
/// session's own target (normal sessions) or everything (discovery).
pub fn answer(
    value: &str,
    initiator: &str,
    current_target: Option<&str>,
    registry: &dyn Registry,
    portal: SocketAddr,
    tpgt: u16,
) -> Vec<u8> {
    let visible = registry.discover(initiator);
    let names: Vec<String> = match (value, current_target) {
        ("All", _) | ("", None) => visible,
        ("", Some(cur)) => vec![cur.to_string()],
        (name, cur) => {
            if visible.iter().any(|v| v == name) || cur == Some(name) {
                vec![name.to_string()]
            } else {
                Vec::new()
            }
        }
    };
    let addr = target_address(portal, tpgt);
    let mut b = TextBuilder::new();
    for n in names {
        b.add("TargetName", &n);
        b.add("TargetAddress", &addr);
    }
    b.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct R;
    impl Registry for R {
        fn discover(&self, initiator: &str) -> Vec<String> {
            if initiator == "iqn.i" {
                vec!["iqn.a".into(), "iqn.b".into()]
            } else {
                vec![]
            }
        }
        fn target(&self, _: &str) -> Option<Arc<dyn crate::Target>> {
            None
        }
    }

    #[test]
    fn lists_visible_targets() {
        let p: SocketAddr = "127.0.0.1:3260".parse().unwrap();
        let t = answer("All", "iqn.i", None, &R, p, 1);
        assert_eq!(
            t,
            b"TargetName=iqn.a\0TargetAddress=127.0.0.1:3260,1\0TargetName=iqn.b\0TargetAddress=127.0.0.1:3260,1\0"
        );
        assert!(answer("All", "iqn.other", None, &R, p, 1).is_empty());
        assert_eq!(answer("iqn.b", "iqn.i", None, &R, p, 1).len(), 48);
        assert!(answer("iqn.c", "iqn.i", None, &R, p, 1).is_empty());
        let v6: SocketAddr = "[::1]:3260".parse().unwrap();
        assert_eq!(target_address(v6, 2), "[::1]:3260,2");
    }
}

//! RFC 2347 option negotiation for read requests: blksize (RFC 2348),
//! timeout and tsize (RFC 2349), windowsize (RFC 7440).
//!
//! Negotiation never fails: an option we do not know, or a value outside its
//! RFC range, is simply left out of the OACK, which RFC 2347 defines as "the
//! server declined it" and the client falls back to the default.

use std::time::Duration;

use crate::packet::{DEFAULT_BLKSIZE, MAX_BLKSIZE, MIN_BLKSIZE};

/// Server-side ceilings that clamp what a client may ask for.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_blksize: u16,
    pub max_windowsize: u16,
    /// Retransmit timeout used unless the client negotiates one.
    pub default_timeout: Duration,
}

/// The parameters one transfer runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: u16,
    pub windowsize: u16,
    pub timeout: Duration,
    /// Options to acknowledge, in the client's order. Empty means no OACK:
    /// RFC 2347 says to start with DATA 1 then, as a plain RFC 1350 server.
    pub oack: Vec<(&'static str, String)>,
}

impl Negotiated {
    pub fn plain(limits: &Limits) -> Negotiated {
        Negotiated {
            blksize: DEFAULT_BLKSIZE,
            windowsize: 1,
            timeout: limits.default_timeout,
            oack: Vec::new(),
        }
    }
}

/// Decides the transfer parameters for a read request.
///
/// `tsize` is the size to report if the client asks for it; `None` when the
/// size is not known up front (netascii, where conversion changes it), in
/// which case the option is declined as tftp-hpa does.
pub fn negotiate(options: &[(&str, &str)], limits: &Limits, tsize: Option<u64>) -> Negotiated {
    let mut n = Negotiated::plain(limits);
    let mut seen = [false; 4];
    for &(name, value) in options {
        let value = value.trim();
        if name.eq_ignore_ascii_case("blksize") {
            if std::mem::replace(&mut seen[0], true) {
                continue;
            }
            let Some(v) = parse_num(value) else { continue };
            if v < u64::from(MIN_BLKSIZE) {
                continue;
            }
            // RFC 2348 lets the server answer with a smaller size; the
            // configured maximum is how the operator keeps blocks inside the
            // path MTU, because fragmented TFTP is what breaks PXE ROMs.
            let cap = limits.max_blksize.clamp(MIN_BLKSIZE, MAX_BLKSIZE);
            let v = v.min(u64::from(cap)) as u16;
            n.blksize = v;
            n.oack.push(("blksize", v.to_string()));
        } else if name.eq_ignore_ascii_case("windowsize") {
            if std::mem::replace(&mut seen[1], true) {
                continue;
            }
            let Some(v) = parse_num(value) else { continue };
            if !(1..=65535).contains(&v) {
                continue;
            }
            let v = v.min(u64::from(limits.max_windowsize.max(1))) as u16;
            n.windowsize = v;
            n.oack.push(("windowsize", v.to_string()));
        } else if name.eq_ignore_ascii_case("timeout") {
            if std::mem::replace(&mut seen[2], true) {
                continue;
            }
            let Some(v) = parse_num(value) else { continue };
            // RFC 2349 defines 1..=255 seconds and requires the server to
            // echo exactly the requested value, so it is accept-or-decline.
            if !(1..=255).contains(&v) {
                continue;
            }
            n.timeout = Duration::from_secs(v);
            n.oack.push(("timeout", v.to_string()));
        } else if name.eq_ignore_ascii_case("tsize") {
            if std::mem::replace(&mut seen[3], true) {
                continue;
            }
            if let Some(size) = tsize {
                n.oack.push(("tsize", size.to_string()));
            }
        }
    }
    n
}

/// Decimal only, and bounded so absurd digit strings cannot overflow.
fn parse_num(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 12 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
        default_timeout: Duration::from_secs(1),
    };

    #[test]
    fn no_options_means_no_oack() {
        let n = negotiate(&[], &LIMITS, Some(10));
        assert_eq!(n, Negotiated::plain(&LIMITS));
    }

    #[test]
    fn clamps_and_echoes_in_order() {
        let n = negotiate(
            &[
                ("TSIZE", "0"),
                ("blksize", "65464"),
                ("multicast", ""),
                ("windowsize", "1000"),
                ("timeout", "3"),
            ],
            &LIMITS,
            Some(1234),
        );
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.windowsize, 64);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(
            n.oack,
            vec![
                ("tsize", "1234".to_string()),
                ("blksize", "1468".to_string()),
                ("windowsize", "64".to_string()),
                ("timeout", "3".to_string()),
            ]
        );
    }

    #[test]
    fn declines_out_of_range() {
        let n = negotiate(
            &[
                ("blksize", "7"),
                ("windowsize", "0"),
                ("windowsize", "4"),
                ("timeout", "0"),
                ("timeout", "x"),
                ("tsize", "0"),
                ("blksize", "99999999999999999999"),
            ],
            &LIMITS,
            None,
        );
        // The first occurrence of each option decides; duplicates are noise.
        assert_eq!(n, Negotiated::plain(&LIMITS));
    }

    #[test]
    fn smaller_request_is_honoured() {
        let n = negotiate(&[("blksize", "1024"), ("windowsize", "8")], &LIMITS, None);
        assert_eq!((n.blksize, n.windowsize), (1024, 8));
    }
}

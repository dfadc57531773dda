//! Arbitrary bytes as a request, ACK or ERROR: parsing must never panic, a
//! parsed packet must survive re-encoding, and a parsed request's options
//! must negotiate to values inside their RFC ranges.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use tftp::options::{negotiate, Limits};
use tftp::packet::{Mode, Packet, MAX_BLKSIZE, MIN_BLKSIZE};
use tftp::root::normalize;

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Packet::parse(data) else {
        return;
    };
    let mut encoded = Vec::new();
    packet.encode(&mut encoded);
    let reparsed = Packet::parse(&encoded).expect("re-encoded packet must parse");
    match (&packet, &reparsed) {
        // Options the parser dropped at a malformed tail are not re-encoded,
        // so requests and OACKs compare field by field.
        (Packet::Rrq(a), Packet::Rrq(b)) | (Packet::Wrq(a), Packet::Wrq(b)) => {
            assert_eq!(a.filename, b.filename);
            assert_eq!(a.mode, b.mode);
            assert_eq!(a.options, b.options);
        }
        _ => assert_eq!(packet, reparsed),
    }

    if let Packet::Rrq(req) = &packet {
        let _ = Mode::parse(req.mode);
        if let Ok(path) = normalize(req.filename) {
            assert!(!path.is_empty());
            assert!(!path.starts_with('/'));
            assert!(!path
                .split('/')
                .any(|c| c == ".." || c == "." || c.is_empty()));
            assert!(!path.contains('\\') && !path.contains('\0'));
        }
        let first = data.first().copied().unwrap_or(0);
        for limits in [
            Limits {
                max_blksize: 1468,
                max_windowsize: 64,
                default_timeout: Duration::from_secs(1),
            },
            Limits {
                max_blksize: u16::from(first),
                max_windowsize: 0,
                default_timeout: Duration::from_millis(1),
            },
        ] {
            let n = negotiate(&req.options, &limits, Some(u64::from(first) << 30));
            assert!((MIN_BLKSIZE..=MAX_BLKSIZE).contains(&n.blksize));
            assert!(n.blksize <= limits.max_blksize.max(MIN_BLKSIZE) || n.blksize == 512);
            assert!(n.windowsize >= 1 && n.windowsize <= limits.max_windowsize.max(1));
            assert!(n.oack.len() <= 4);
        }
    }
});

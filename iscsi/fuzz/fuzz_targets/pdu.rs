//! Bytes into every parser a PDU meets: framing with and without digests,
//! the BHS, the AHS and the text segment.
#![no_main]

use iscsi::pdu::{parse_ahs, segment_lengths, Bhs, BHS_LEN};
use iscsi::wire::{Digests, Reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Bhs::parse(data);
    let _ = segment_lengths(data);
    let _ = parse_ahs(data);
    let _ = parse_ahs(data.get(BHS_LEN..).unwrap_or(&[]));
    let _ = iscsi::text::parse(data);
    let digests = Digests {
        header: data.first().is_some_and(|b| b & 1 != 0),
        data: data.first().is_some_and(|b| b & 2 != 0),
    };
    let mut r = Reader::new(64);
    r.push(data);
    while let Ok(Some(f)) = r.next_frame(digests, 65536) {
        let _ = r.slice(f.data.clone());
        let _ = parse_ahs(r.slice(f.ahs.clone()));
    }
});

//! Frames of the replication protocol, as a replica (requests) and a
//! primary (replies) read them off the wire: decoding never panics, and
//! whatever decodes encodes back to a frame that decodes the same.
#![no_main]

use api::replication::{
    decode_reply, decode_request, encode_hello, encode_op, encode_reply, frame_len, Request,
};
use libfuzzer_sys::fuzz_target;

fn body(frame: &[u8]) -> &[u8] {
    let header = [frame[0], frame[1], frame[2], frame[3]];
    assert_eq!(frame_len(header).expect("own frame"), frame.len() - 4);
    &frame[4..]
}

fuzz_target!(|data: &[u8]| {
    if data.len() >= 4 {
        let _ = frame_len([data[0], data[1], data[2], data[3]]);
    }
    if let Ok(req) = decode_request(data) {
        let mut out = Vec::new();
        match &req {
            Request::Hello(h) => encode_hello(h, &mut out),
            Request::Op(op) => encode_op(op, &mut out),
        }
        assert_eq!(decode_request(body(&out)).as_ref(), Ok(&req));
    }
    if let Ok(reply) = decode_reply(data) {
        let mut out = Vec::new();
        encode_reply(&reply, &mut out);
        assert_eq!(decode_reply(body(&out)).as_ref(), Ok(&reply));
    }
});

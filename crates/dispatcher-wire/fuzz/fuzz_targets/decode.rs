//! Fuzzes the frame decoder: any bytes, as one WebSocket message, must decode without panicking, and
//! every frame that decodes must re-encode to exactly the bytes it was decoded from.
#![no_main]

use dispatcher_wire::frame::{DEFAULT_MAX_PAYLOAD, FrameError, HEADER_LEN, decode, encode, frames};
use libfuzzer_sys::fuzz_target;

/// Walks `data` as one message with `max_payload`, checking each Ok frame's re-encoding.
fn check(data: &[u8], max_payload: u32) {
    let mut at = 0usize;
    let mut out = Vec::new();
    for item in frames(data, max_payload) {
        let Ok(frame) = item else { break };
        out.clear();
        assert!(
            encode(&frame, &mut out).is_ok(),
            "a decoded frame must re-encode"
        );
        assert_eq!(out.len(), frame.encoded_len());
        assert_eq!(
            Some(&out[..]),
            data.get(at..at + out.len()),
            "re-encoding differs at {at}"
        );
        at += out.len();
    }
}

fuzz_target!(|data: &[u8]| {
    check(data, DEFAULT_MAX_PAYLOAD);
    // A small limit (taken from the last byte, so the fuzzer steers it): whatever decodes under it
    // must decode the same way under the default.
    let small = u32::from(data.last().copied().unwrap_or(0) % 64);
    match decode(data, small) {
        Ok((frame, used)) => {
            assert!(used - HEADER_LEN <= small as usize);
            assert_eq!(decode(data, DEFAULT_MAX_PAYLOAD), Ok((frame, used)));
        }
        Err(FrameError::TooLong { len, max }) => {
            assert!(len > max);
            assert_eq!(max, small);
        }
        Err(_) => {}
    }
    check(data, small);
});

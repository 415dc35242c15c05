//! Tests of the frame codec: round trips (property-based), every refusal, and the documented examples.

use super::*;
use proptest::prelude::*;
use std::time::{Duration, Instant};

/// An owned mirror of [`Frame`], so proptest can generate frames (which borrow).
#[derive(Debug, Clone)]
enum Owned {
    Hello([u8; 16], String),
    Auth([u8; 32]),
    Deliver(u16, u64, u16, MessageId, Vec<u8>),
    Ack(u16, u64, MessageId),
    Nack(u16, u64, MessageId, bool, String),
    Credit(u32),
    Ping(u64),
    Pong(u64),
    Error(u16, String),
    Close(u16, String),
}

impl Owned {
    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::Hello(nonce, id) => Frame::Hello {
                nonce: *nonce,
                peer_id: id,
            },
            Owned::Auth(proof) => Frame::Auth { proof: *proof },
            Owned::Deliver(partition, epoch, attempt, id, body) => Frame::Deliver(Delivery {
                partition: *partition,
                epoch: *epoch,
                attempt: *attempt,
                id: *id,
                body,
            }),
            Owned::Ack(partition, epoch, id) => Frame::Ack {
                partition: *partition,
                epoch: *epoch,
                id: *id,
            },
            Owned::Nack(partition, epoch, id, reject, reason) => Frame::Nack {
                partition: *partition,
                epoch: *epoch,
                id: *id,
                reject: *reject,
                reason,
            },
            Owned::Credit(n) => Frame::Credit { n: *n },
            Owned::Ping(token) => Frame::Ping { token: *token },
            Owned::Pong(token) => Frame::Pong { token: *token },
            Owned::Error(code, message) => Frame::Error {
                code: *code,
                message,
            },
            Owned::Close(code, reason) => Frame::Close {
                code: *code,
                reason,
            },
        }
    }
}

fn arb_id() -> impl Strategy<Value = MessageId> {
    (any::<u64>(), any::<u64>()).prop_map(|(ms, seq)| MessageId { ms, seq })
}

/// Any text, multi-byte characters included.
fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "\\PC{0,40}", any::<String>()]
}

/// A peer id: 1..=255 bytes of UTF-8 (up to 63 characters of up to 4 bytes, or exactly 255 ASCII).
fn arb_peer_id() -> impl Strategy<Value = String> {
    prop_oneof!["\\PC{1,63}", "[a-z0-9-]{1,255}", Just("p".repeat(255))]
}

fn arb_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (any::<[u8; 16]>(), arb_peer_id()).prop_map(|(n, id)| Owned::Hello(n, id)),
        any::<[u8; 32]>().prop_map(Owned::Auth),
        (
            any::<u16>(),
            any::<u64>(),
            any::<u16>(),
            arb_id(),
            proptest::collection::vec(any::<u8>(), 0..300)
        )
            .prop_map(|(p, e, a, id, body)| Owned::Deliver(p, e, a, id, body)),
        (any::<u16>(), any::<u64>(), arb_id()).prop_map(|(p, e, id)| Owned::Ack(p, e, id)),
        (
            any::<u16>(),
            any::<u64>(),
            arb_id(),
            any::<bool>(),
            arb_text()
        )
            .prop_map(|(p, e, id, r, t)| Owned::Nack(p, e, id, r, t)),
        any::<u32>().prop_map(Owned::Credit),
        any::<u64>().prop_map(Owned::Ping),
        any::<u64>().prop_map(Owned::Pong),
        (any::<u16>(), arb_text()).prop_map(|(c, t)| Owned::Error(c, t)),
        (any::<u16>(), arb_text()).prop_map(|(c, t)| Owned::Close(c, t)),
    ]
}

fn enc(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out).expect("encodable frame");
    out
}

/// A frame with the given command byte and payload, header built by hand.
fn raw(command: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![VERSION, command];
    out.extend_from_slice(&u32::try_from(payload.len()).expect("small").to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn decode_err(bytes: &[u8]) -> FrameError {
    decode(bytes, DEFAULT_MAX_PAYLOAD).expect_err("must be refused")
}

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| b.is_ascii_hexdigit()).collect();
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("ascii"), 16).expect("hex"))
        .collect()
}

const ALL_COMMANDS: [Command; 10] = [
    Command::Hello,
    Command::Auth,
    Command::Deliver,
    Command::Ack,
    Command::Nack,
    Command::Credit,
    Command::Ping,
    Command::Pong,
    Command::Error,
    Command::Close,
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn every_frame_round_trips(owned in arb_frame()) {
        let frame = owned.frame();
        let bytes = enc(&frame);
        prop_assert_eq!(bytes.len(), frame.encoded_len());
        prop_assert_eq!(bytes[0], VERSION);
        prop_assert_eq!(bytes[1], frame.command() as u8);
        let (back, used) = decode(&bytes, DEFAULT_MAX_PAYLOAD).expect("decodes");
        prop_assert_eq!(back, frame);
        prop_assert_eq!(used, bytes.len());
        // Bytes after the frame are not decode's business.
        let mut longer = bytes.clone();
        longer.extend_from_slice(&[0xAB; 7]);
        prop_assert_eq!(decode(&longer, DEFAULT_MAX_PAYLOAD), Ok((frame, bytes.len())));
    }

    #[test]
    fn several_frames_share_one_message(owned in proptest::collection::vec(arb_frame(), 0..12)) {
        let mut message = Vec::new();
        for o in &owned {
            encode(&o.frame(), &mut message).expect("encodable frame");
        }
        let back: Vec<Frame<'_>> = frames(&message, DEFAULT_MAX_PAYLOAD)
            .collect::<Result<_, _>>()
            .expect("every frame decodes");
        let want: Vec<Frame<'_>> = owned.iter().map(Owned::frame).collect();
        prop_assert_eq!(back, want);
    }

    #[test]
    fn a_message_cut_short_yields_its_whole_frames_then_one_error(
        owned in proptest::collection::vec(arb_frame(), 1..6),
        cut in any::<proptest::sample::Index>(),
    ) {
        let mut message = Vec::new();
        for o in &owned {
            encode(&o.frame(), &mut message).expect("encodable frame");
        }
        let cut = cut.index(message.len()); // 0..len: always cuts at least one byte
        let mut it = frames(&message[..cut], DEFAULT_MAX_PAYLOAD);
        let mut whole = 0usize;
        let mut errors = 0usize;
        for item in it.by_ref() {
            match item {
                Ok(_) => whole += 1,
                Err(e) => {
                    errors += 1;
                    prop_assert!(matches!(e, FrameError::Short { .. } | FrameError::Truncated { .. }), "{e:?}");
                }
            }
        }
        prop_assert!(it.next().is_none());
        prop_assert!(whole < owned.len());
        // A cut exactly between frames leaves no partial frame, hence no error.
        let boundaries: Vec<usize> = owned.iter().scan(0, |at, o| { *at += o.frame().encoded_len(); Some(*at) }).collect();
        prop_assert_eq!(errors, usize::from(cut != 0 && !boundaries.contains(&cut)));
    }

    #[test]
    fn arbitrary_bytes_never_panic_and_ok_frames_reencode_exactly(
        bytes in proptest::collection::vec(any::<u8>(), 0..200),
        max in prop_oneof![Just(DEFAULT_MAX_PAYLOAD), 0u32..64],
    ) {
        check_reencodes(&bytes, max)?;
    }

    #[test]
    fn plausible_bytes_never_panic_and_ok_frames_reencode_exactly(
        parts in proptest::collection::vec(
            (
                prop_oneof![Just(VERSION), any::<u8>()],
                prop_oneof![proptest::sample::select(ALL_COMMANDS.map(|c| c as u8).to_vec()), any::<u8>()],
                proptest::collection::vec(any::<u8>(), 0..48),
                0u32..4,
            ),
            1..5,
        ),
    ) {
        // Headers that mostly carry a real version and command and a length near the truth, so the
        // payload checks (not just the header checks) get exercised with random contents.
        let mut bytes = Vec::new();
        for (version, command, payload, skew) in parts {
            bytes.push(version);
            bytes.push(command);
            let len = u32::try_from(payload.len()).expect("small").saturating_add(skew).saturating_sub(1);
            bytes.extend_from_slice(&len.to_be_bytes());
            bytes.extend_from_slice(&payload);
        }
        check_reencodes(&bytes, DEFAULT_MAX_PAYLOAD)?;
    }

    #[test]
    fn message_ids_round_trip_through_text(id in arb_id()) {
        prop_assert_eq!(id.to_string().parse::<MessageId>(), Ok(id));
    }
}

/// Decodes `bytes` as one message; every Ok frame must re-encode to exactly the bytes it came from.
fn check_reencodes(bytes: &[u8], max: u32) -> Result<(), TestCaseError> {
    let mut at = 0usize;
    for item in frames(bytes, max) {
        let Ok(frame) = item else { break };
        let again = enc(&frame);
        prop_assert_eq!(&again[..], &bytes[at..at + again.len()]);
        at += again.len();
    }
    Ok(())
}

#[test]
fn short_headers_are_short() {
    let header = [VERSION, Command::Ping as u8, 0, 0, 0, 8];
    for n in 0..HEADER_LEN {
        assert_eq!(
            decode_err(&header[..n]),
            FrameError::Short { need: 6, have: n }
        );
    }
    // A message with a whole frame and then a partial header.
    let mut message = enc(&Frame::Ping { token: 1 });
    message.extend_from_slice(&[VERSION, 0x20]);
    let got: Vec<_> = frames(&message, DEFAULT_MAX_PAYLOAD).collect();
    assert_eq!(
        got,
        vec![
            Ok(Frame::Ping { token: 1 }),
            Err(FrameError::Short { need: 6, have: 2 })
        ]
    );
}

#[test]
fn unknown_versions_are_refused() {
    let mut bytes = enc(&Frame::Ping { token: 7 });
    for v in (0..=255u8).filter(|&v| v != VERSION) {
        bytes[0] = v;
        assert_eq!(decode_err(&bytes), FrameError::Version(v));
    }
    assert_eq!(
        FrameError::Version(2).code(),
        ERR_UNSUPPORTED_VERSION,
        "{}",
        FrameError::Version(2)
    );
}

#[test]
fn unknown_commands_are_refused_and_known_ones_map_both_ways() {
    for b in 0..=255u8 {
        match Command::try_from(b) {
            Ok(c) => {
                assert_eq!(c as u8, b);
                assert!(ALL_COMMANDS.contains(&c));
            }
            Err(e) => {
                assert_eq!(e, FrameError::Command(b));
                assert_eq!(decode_err(&raw(b, &[0; 8])), FrameError::Command(b));
                assert_eq!(e.code(), ERR_UNKNOWN_COMMAND);
            }
        }
    }
    assert_eq!(ALL_COMMANDS.len(), 10);
}

// decode borrows from its input and returns slices of it: there is nothing it could allocate, so a
// 4 GB length field cannot make it allocate 4 GB. It must still refuse such a frame at once, before
// looking at (or slicing) any payload.
#[test]
fn a_four_gigabyte_length_is_refused_at_once_without_allocating() {
    let started = Instant::now();
    for command in ALL_COMMANDS {
        let bytes = [VERSION, command as u8, 0xFF, 0xFF, 0xFF, 0xFF];
        assert_eq!(
            decode(&bytes, DEFAULT_MAX_PAYLOAD),
            Err(FrameError::TooLong {
                len: u32::MAX,
                max: DEFAULT_MAX_PAYLOAD
            })
        );
        assert_eq!(
            decode(&bytes, u32::MAX),
            Err(FrameError::Truncated {
                len: u32::MAX,
                have: 0
            })
        );
        let with_some = [&bytes[..], &[0u8; 10]].concat();
        assert_eq!(
            decode(&with_some, u32::MAX),
            Err(FrameError::Truncated {
                len: u32::MAX,
                have: 10
            })
        );
    }
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[test]
fn the_length_limit_is_inclusive() {
    let bytes = enc(&Frame::Credit { n: 9 });
    assert_eq!(decode(&bytes, 4), Ok((Frame::Credit { n: 9 }, 10)));
    assert_eq!(
        decode(&bytes, 3),
        Err(FrameError::TooLong { len: 4, max: 3 })
    );
}

#[test]
fn a_length_beyond_the_message_is_truncated() {
    let bytes = enc(&Frame::Ack {
        partition: 1,
        epoch: 2,
        id: MessageId::new(3, 4),
    });
    for cut in HEADER_LEN..bytes.len() {
        assert_eq!(
            decode_err(&bytes[..cut]),
            FrameError::Truncated {
                len: 26,
                have: cut - HEADER_LEN
            }
        );
    }
    let err = decode_err(&bytes[..10]);
    assert_eq!(err.code(), ERR_BAD_FRAME);
    assert!(err.to_string().contains("26"), "{err}");
}

#[test]
fn wrong_fixed_sizes_are_refused_for_every_command() {
    // (command, the smallest valid size, whether any longer size is valid too)
    let sizes: [(Command, usize, bool); 10] = [
        (Command::Hello, 18, false), // 16 nonce + 1 length + 1 id byte (a longer id needs a longer length byte)
        (Command::Auth, 32, false),
        (Command::Deliver, 28, true),
        (Command::Ack, 26, false),
        (Command::Nack, 27, true),
        (Command::Credit, 4, false),
        (Command::Ping, 8, false),
        (Command::Pong, 8, false),
        (Command::Error, 2, true),
        (Command::Close, 2, true),
    ];
    for (command, min, open) in sizes {
        for len in 0..min + 40 {
            // Payload bytes 0x01 (so a hello's id length byte says 1 and a nack's flag is valid).
            let bytes = raw(command as u8, &vec![1u8; len]);
            let got = decode(&bytes, DEFAULT_MAX_PAYLOAD);
            let valid = len == min || (open && len > min);
            match got {
                Ok((frame, used)) => {
                    assert!(valid, "{command} accepted {len} bytes");
                    assert_eq!(frame.command(), command);
                    assert_eq!(used, bytes.len());
                }
                Err(FrameError::Payload { command: c, what }) => {
                    assert!(!valid, "{command} refused {len} bytes: {what}");
                    assert_eq!(c, command);
                }
                Err(other) => panic!("{command} with {len} bytes: unexpected {other:?}"),
            }
        }
    }
}

fn hello_payload(id: &[u8], id_len: u8) -> Vec<u8> {
    let mut p = vec![7u8; 16];
    p.push(id_len);
    p.extend_from_slice(id);
    p
}

#[test]
fn hello_refuses_trailing_bytes_an_empty_id_and_an_id_beyond_the_payload() {
    let ok = raw(0x01, &hello_payload(b"abc", 3));
    assert_eq!(
        decode(&ok, DEFAULT_MAX_PAYLOAD),
        Ok((
            Frame::Hello {
                nonce: [7; 16],
                peer_id: "abc"
            },
            ok.len()
        ))
    );
    let cases: [(&[u8], u8, &str); 4] = [
        (b"abcd", 3, "trailing bytes after the peer id"),
        (b"", 0, "empty peer id"),
        (b"abc", 0, "empty peer id"),
        (b"abc", 4, "peer id longer than the rest of the payload"),
    ];
    for (id, id_len, what) in cases {
        assert_eq!(
            decode_err(&raw(0x01, &hello_payload(id, id_len))),
            FrameError::Payload {
                command: Command::Hello,
                what
            },
            "{id:?} with length byte {id_len}"
        );
    }
    let err = decode_err(&raw(0x01, &hello_payload(b"", 0)));
    assert_eq!(err.code(), ERR_BAD_FRAME);
    assert_eq!(err.to_string(), "malformed hello payload: empty peer id");
}

#[test]
fn nack_refuses_a_reject_flag_other_than_0_or_1() {
    let mut payload = vec![0u8; 26];
    payload.push(0);
    payload.extend_from_slice(b"why");
    for flag in 0..=255u8 {
        payload[26] = flag;
        let bytes = raw(0x12, &payload);
        let got = decode(&bytes, DEFAULT_MAX_PAYLOAD);
        match flag {
            0 | 1 => match got {
                Ok((Frame::Nack { reject, reason, .. }, _)) => {
                    assert_eq!(reject, flag == 1);
                    assert_eq!(reason, "why");
                }
                other => panic!("flag {flag}: {other:?}"),
            },
            _ => assert_eq!(
                got,
                Err(FrameError::Payload {
                    command: Command::Nack,
                    what: "reject flag must be 0 or 1"
                })
            ),
        }
    }
}

#[test]
fn invalid_utf8_is_refused_in_every_text_field() {
    // An overlong encoding, a lone continuation byte, a truncated 3-byte sequence, a surrogate.
    let bad: [&[u8]; 4] = [b"\xC0\xAF", b"ok\x80", b"\xE2\x82", b"\xED\xA0\x80"];
    for b in bad {
        let hello = raw(
            0x01,
            &hello_payload(b, u8::try_from(b.len()).expect("small")),
        );
        let nack = raw(0x12, &[&[0u8; 27][..], b].concat());
        let error = raw(0x30, &[&[0u8, 5][..], b].concat());
        let close = raw(0x31, &[&[0u8, 6][..], b].concat());
        for (bytes, command) in [
            (hello, Command::Hello),
            (nack, Command::Nack),
            (error, Command::Error),
            (close, Command::Close),
        ] {
            let err = decode_err(&bytes);
            assert_eq!(err, FrameError::Utf8 { command }, "{b:?}");
            assert_eq!(err.code(), ERR_BAD_FRAME);
        }
    }
}

#[test]
fn frames_stops_after_the_first_error() {
    let mut message = enc(&Frame::Credit { n: 3 });
    message.extend_from_slice(&raw(0x77, &[]));
    message.extend_from_slice(&enc(&Frame::Ping { token: 1 }));
    let got: Vec<_> = frames(&message, DEFAULT_MAX_PAYLOAD).collect();
    assert_eq!(
        got,
        vec![Ok(Frame::Credit { n: 3 }), Err(FrameError::Command(0x77))]
    );
    assert_eq!(frames(&[], DEFAULT_MAX_PAYLOAD).count(), 0);
}

#[test]
fn encode_refuses_peer_ids_no_hello_can_carry_and_leaves_out_unchanged() {
    let long = "x".repeat(256);
    let mut out = vec![9u8];
    for (id, len) in [("", 0), (long.as_str(), 256)] {
        let hello = Frame::Hello {
            nonce: [0; 16],
            peer_id: id,
        };
        assert_eq!(
            encode(&hello, &mut out),
            Err(FrameError::PeerIdLength { len })
        );
        assert_eq!(out, vec![9u8]);
    }
    // 255 bytes is the most, in bytes not characters.
    let max = "é".repeat(127) + "x"; // 255 bytes
    let frame = Frame::Hello {
        nonce: [1; 16],
        peer_id: &max,
    };
    assert_eq!(
        decode(&enc(&frame), DEFAULT_MAX_PAYLOAD).map(|(f, _)| f),
        Ok(frame)
    );
    let over = "é".repeat(128); // 256 bytes, 128 characters
    assert!(
        encode(
            &Frame::Hello {
                nonce: [1; 16],
                peer_id: &over
            },
            &mut out
        )
        .is_err()
    );
    assert_eq!(
        FrameError::PeerIdLength { len: 0 }.code(),
        ERR_INTERNAL,
        "{}",
        FrameError::PeerIdLength { len: 0 }
    );
}

#[test]
fn encode_refuses_a_payload_beyond_the_length_field() {
    // Building a 4 GB body to show it would be absurd; the check encode relies on is this one.
    let too_long = usize::try_from(u64::from(u32::MAX) + 1).expect("64-bit target");
    assert_eq!(
        length_field(Command::Deliver, too_long),
        Err(FrameError::PayloadTooLarge {
            command: Command::Deliver,
            len: too_long
        })
    );
    assert_eq!(
        length_field(Command::Deliver, u32::MAX as usize),
        Ok(u32::MAX)
    );
}

#[test]
fn error_codes_are_the_documented_numbers() {
    assert_eq!(
        [
            ERR_BAD_FRAME,
            ERR_UNSUPPORTED_VERSION,
            ERR_UNKNOWN_COMMAND,
            ERR_AUTH_FAILED,
            ERR_PROTOCOL_VIOLATION,
            ERR_GOING_AWAY,
            ERR_INTERNAL
        ],
        [1, 2, 3, 4, 5, 6, 7]
    );
    assert_eq!(CLOSE_NORMAL, 0);
}

#[test]
fn message_ids_parse_only_ms_dash_seq() {
    assert_eq!("0-0".parse(), Ok(MessageId::new(0, 0)));
    assert_eq!(
        "1700000000000-5".parse(),
        Ok(MessageId::new(1_700_000_000_000, 5))
    );
    assert_eq!(
        "18446744073709551615-18446744073709551615".parse(),
        Ok(MessageId::new(u64::MAX, u64::MAX))
    );
    assert_eq!(MessageId::new(12, 3).to_string(), "12-3");
    for bad in [
        "",
        "5",
        "-",
        "a-b",
        "1-",
        "-1",
        "1-2-3",
        "+1-2",
        "1-+2",
        " 1-2",
        "1-2 ",
        "1--2",
        "18446744073709551616-0",
        "0-18446744073709551616",
        "١-٢", // non-ASCII digits
    ] {
        let err = bad.parse::<MessageId>().expect_err(bad);
        assert!(err.to_string().contains("<ms>-<seq>"), "{err}");
    }
    assert!(MessageId::new(1, 9) < MessageId::new(2, 0));
    assert!(MessageId::new(2, 0) < MessageId::new(2, 1));
}

#[test]
fn display_messages_are_clear() {
    let cases = [
        (
            FrameError::Short { need: 6, have: 2 },
            "short frame: a header needs 6 bytes, 2 present",
        ),
        (
            FrameError::Version(9),
            "unsupported protocol version 9 (this side speaks version 1)",
        ),
        (FrameError::Command(0x7f), "unknown command 0x7f"),
        (
            FrameError::TooLong {
                len: u32::MAX,
                max: DEFAULT_MAX_PAYLOAD,
            },
            "frame payload of 4294967295 bytes is above the limit of 8388608 bytes",
        ),
        (
            FrameError::Truncated { len: 26, have: 3 },
            "truncated frame: the header announces 26 payload bytes, 3 present",
        ),
        (
            FrameError::Utf8 {
                command: Command::Close,
            },
            "invalid UTF-8 in the text of a close frame",
        ),
    ];
    for (err, text) in cases {
        assert_eq!(err.to_string(), text);
    }
}

// The examples in docs/protocol.md, byte for byte.
#[test]
fn the_documented_examples_hold() {
    let nonce_d: [u8; 16] = std::array::from_fn(|i| i as u8);
    let nonce_c: [u8; 16] = std::array::from_fn(|i| 16 + i as u8);
    let hello_d = Frame::Hello {
        nonce: nonce_d,
        peer_id: "dispatcher-1",
    };
    assert_eq!(
        enc(&hello_d),
        hex("01 01 0000001d 000102030405060708090a0b0c0d0e0f 0c 646973706174636865722d31")
    );
    let proof_c = crate::handshake::proof(
        b"correct horse battery staple",
        crate::handshake::Role::Consumer,
        &nonce_d,
        &nonce_c,
        "dispatcher-1",
        "billing",
    );
    let mut reply = enc(&Frame::Hello {
        nonce: nonce_c,
        peer_id: "billing",
    });
    encode(&Frame::Auth { proof: proof_c }, &mut reply).expect("encodes");
    assert_eq!(
        reply,
        hex(
            "01 01 00000018 101112131415161718191a1b1c1d1e1f 07 62696c6c696e67 \
             01 02 00000020 ef1596cf0acdf997ae14ed7f23f81ee3f35808d7cc43beb36b3e7535e5a790f0"
        )
    );
    let proof_d = crate::handshake::proof(
        b"correct horse battery staple",
        crate::handshake::Role::Dispatcher,
        &nonce_d,
        &nonce_c,
        "dispatcher-1",
        "billing",
    );
    assert_eq!(
        enc(&Frame::Auth { proof: proof_d }),
        hex("01 02 00000020 3bd3264c72285d93060d0cdf494421234e21f1d8c0298c929f3c9802e2199332")
    );
    assert_eq!(
        enc(&Frame::Credit { n: 64 }),
        hex("01 13 00000004 00000040")
    );
    let id: MessageId = "1700000000000-3".parse().expect("id");
    let deliver = Frame::Deliver(Delivery {
        partition: 5,
        epoch: 42,
        attempt: 1,
        id,
        body: b"{\"order\":7}",
    });
    assert_eq!(
        enc(&deliver),
        hex(
            "01 10 00000027 0005 000000000000002a 0001 0000018bcfe56800 0000000000000003 \
             7b226f72646572223a377d"
        )
    );
    let ack = Frame::Ack {
        partition: 5,
        epoch: 42,
        id,
    };
    assert_eq!(
        enc(&ack),
        hex("01 11 0000001a 0005 000000000000002a 0000018bcfe56800 0000000000000003")
    );
    let nack = Frame::Nack {
        partition: 5,
        epoch: 42,
        id,
        reject: true,
        reason: "bad json",
    };
    assert_eq!(
        enc(&nack),
        hex(
            "01 12 00000023 0005 000000000000002a 0000018bcfe56800 0000000000000003 01 \
             626164206a736f6e"
        )
    );
    let ping = Frame::Ping {
        token: 0x0102_0304_0506_0708,
    };
    assert_eq!(enc(&ping), hex("01 20 00000008 0102030405060708"));
    let pong = Frame::Pong {
        token: 0x0102_0304_0506_0708,
    };
    assert_eq!(enc(&pong), hex("01 21 00000008 0102030405060708"));
    let refused = Frame::Close {
        code: ERR_AUTH_FAILED,
        reason: "",
    };
    assert_eq!(enc(&refused), hex("01 31 00000002 0004"));
    let error = Frame::Error {
        code: ERR_AUTH_FAILED,
        message: "auth failed",
    };
    assert_eq!(
        enc(&error),
        hex("01 30 0000000d 0004 61757468206661696c6564")
    );
    let close = Frame::Close {
        code: ERR_GOING_AWAY,
        reason: "",
    };
    assert_eq!(enc(&close), hex("01 31 00000002 0006"));
    // Two acks and a credit in one WebSocket message.
    let id2 = MessageId::new(1_700_000_000_000, 4);
    let message = hex(
        "01 11 0000001a 0005 000000000000002a 0000018bcfe56800 0000000000000003 \
         01 11 0000001a 0005 000000000000002a 0000018bcfe56800 0000000000000004 \
         01 13 00000004 00000002",
    );
    let got: Vec<_> = frames(&message, DEFAULT_MAX_PAYLOAD).collect();
    assert_eq!(
        got,
        vec![
            Ok(ack),
            Ok(Frame::Ack {
                partition: 5,
                epoch: 42,
                id: id2
            }),
            Ok(Frame::Credit { n: 2 }),
        ]
    );
}

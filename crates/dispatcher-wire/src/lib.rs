//! The push-delivery wire protocol, byte for byte as `docs/protocol.md` describes it: the frame codec
//! ([`frame`]) and the hello/auth proofs ([`handshake`]). Pure: this crate does no I/O, spawns nothing
//! and knows nothing of WebSocket or Redis.

pub mod frame;
pub mod handshake;

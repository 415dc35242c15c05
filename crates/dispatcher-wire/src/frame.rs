//! The frame codec: the 6-byte header, every command's payload layout, and the decoder's refusals.
//!
//! A frame is `version u8 | command u8 | length u32 (big-endian) | payload (length bytes)`; one WebSocket
//! binary message carries one or more whole frames. Decoding borrows from the input (text and bodies are
//! slices of it), so a decoded frame costs no allocation and a hostile length field (say 4 GB) can cost
//! none either: it is compared with the limit and with the bytes present before anything is sliced.
//! `docs/protocol.md` is the byte-for-byte description; this file is the code that matches it.

use std::fmt;
use std::iter::FusedIterator;
use std::str::FromStr;

/// The protocol version this codec speaks (the first byte of every frame).
pub const VERSION: u8 = 1;
/// Bytes before the payload: 1 byte version, 1 byte command, 4 byte big-endian payload length.
pub const HEADER_LEN: usize = 6;
/// The default limit on one frame's payload length (8 MiB).
pub const DEFAULT_MAX_PAYLOAD: u32 = 8 * 1024 * 1024;

/// Close code: a normal close, no error (only in a `Close` frame).
pub const CLOSE_NORMAL: u16 = 0;
/// Protocol error code: a malformed frame (bad sizes, flags, UTF-8, truncated or oversized).
pub const ERR_BAD_FRAME: u16 = 1;
/// Protocol error code: the frame's version byte is not one this side speaks.
pub const ERR_UNSUPPORTED_VERSION: u16 = 2;
/// Protocol error code: the frame's command byte is unknown.
pub const ERR_UNKNOWN_COMMAND: u16 = 3;
/// Protocol error code: the peer's hello/auth proof did not verify.
pub const ERR_AUTH_FAILED: u16 = 4;
/// Protocol error code: a well-formed frame at the wrong time (deliver before auth, over credit, ...).
pub const ERR_PROTOCOL_VIOLATION: u16 = 5;
/// Protocol error code: this side is shutting down.
pub const ERR_GOING_AWAY: u16 = 6;
/// Protocol error code: this side failed internally.
pub const ERR_INTERNAL: u16 = 7;

const DELIVER_FIXED: usize = 28;
const ACK_LEN: usize = 26;
const NACK_FIXED: usize = ACK_LEN + 1;
const HELLO_FIXED: usize = 17;
const AUTH_LEN: usize = 32;
const CREDIT_LEN: usize = 4;
const PING_LEN: usize = 8;
const TEXT_FIXED: usize = 2;

/// A Redis Stream entry id `<ms>-<seq>`, carried as two big-endian u64 (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MessageId {
    /// Milliseconds part (the Redis server's clock when the entry was added).
    pub ms: u64,
    /// Sequence number within that millisecond.
    pub seq: u64,
}

impl MessageId {
    /// The id `ms-seq`.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Self { ms, seq }
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// Why a string is not a message id: it must be `<ms>-<seq>`, two decimal u64 joined by one `-`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a stream message id (expected <ms>-<seq>, two decimal u64): {input:?}")]
pub struct ParseIdError {
    input: String,
}

impl FromStr for MessageId {
    type Err = ParseIdError;

    /// Parses `<ms>-<seq>`. Both parts are required and must be plain ASCII digits fitting a u64
    /// (no sign, no spaces); a bare `5` (which Redis accepts in some commands) is refused.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseIdError {
            input: s.chars().take(64).collect(),
        };
        let (ms, seq) = s.split_once('-').ok_or_else(err)?;
        let part = |p: &str| -> Option<u64> {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            p.parse().ok()
        };
        match (part(ms), part(seq)) {
            (Some(ms), Some(seq)) => Ok(Self { ms, seq }),
            _ => Err(err()),
        }
    }
}

/// One message pushed to a consumer (the payload of a `Deliver` frame).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery<'a> {
    /// The stream partition the message belongs to.
    pub partition: u16,
    /// The leader's fencing epoch for that partition.
    pub epoch: u64,
    /// 1 for the first delivery, counting up on each redelivery.
    pub attempt: u16,
    /// The message's stream id.
    pub id: MessageId,
    /// The message body, opaque to the protocol (may be empty).
    pub body: &'a [u8],
}

/// One decoded frame; text and bodies borrow from the decoded buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// `0x01`: a side's nonce and id, the first frame each side sends.
    Hello {
        /// 16 random bytes, fresh per connection.
        nonce: [u8; 16],
        /// The sender's id, 1..=255 bytes of UTF-8.
        peer_id: &'a str,
    },
    /// `0x02`: HMAC-SHA256 proof of the shared secret (see [`crate::handshake`]).
    Auth {
        /// The 32-byte proof.
        proof: [u8; 32],
    },
    /// `0x10`: a message for the consumer; consumes one credit.
    Deliver(Delivery<'a>),
    /// `0x11`: the consumer processed the message.
    Ack {
        /// Partition of the delivery.
        partition: u16,
        /// Epoch of the delivery.
        epoch: u64,
        /// Id of the message.
        id: MessageId,
    },
    /// `0x12`: the consumer did not process the message: retry it later, or (`reject`) dead-letter it now.
    Nack {
        /// Partition of the delivery.
        partition: u16,
        /// Epoch of the delivery.
        epoch: u64,
        /// Id of the message.
        id: MessageId,
        /// True: do not retry, dead-letter the message now.
        reject: bool,
        /// Why, for logs and the dead-letter entry (may be empty).
        reason: &'a str,
    },
    /// `0x13`: the consumer can take `n` more deliveries.
    Credit {
        /// Additional deliveries granted.
        n: u32,
    },
    /// `0x20`: liveness probe; the peer answers `Pong` with the same token.
    Ping {
        /// Echoed back in the `Pong`.
        token: u64,
    },
    /// `0x21`: answer to a `Ping`.
    Pong {
        /// The `Ping`'s token.
        token: u64,
    },
    /// `0x30`: the sender saw an error (see the `ERR_*` codes).
    Error {
        /// One of the `ERR_*` codes.
        code: u16,
        /// Human-readable detail (may be empty).
        message: &'a str,
    },
    /// `0x31`: the sender hangs up after this frame.
    Close {
        /// One of the `ERR_*` codes, or [`CLOSE_NORMAL`].
        code: u16,
        /// Human-readable detail (may be empty).
        reason: &'a str,
    },
}

/// The command byte of a frame.
#[repr(u8)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// See [`Frame::Hello`].
    Hello = 0x01,
    /// See [`Frame::Auth`].
    Auth = 0x02,
    /// See [`Frame::Deliver`].
    Deliver = 0x10,
    /// See [`Frame::Ack`].
    Ack = 0x11,
    /// See [`Frame::Nack`].
    Nack = 0x12,
    /// See [`Frame::Credit`].
    Credit = 0x13,
    /// See [`Frame::Ping`].
    Ping = 0x20,
    /// See [`Frame::Pong`].
    Pong = 0x21,
    /// See [`Frame::Error`].
    Error = 0x30,
    /// See [`Frame::Close`].
    Close = 0x31,
}

impl Command {
    /// The command's lower-case name, as the docs and logs spell it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hello => "hello",
            Self::Auth => "auth",
            Self::Deliver => "deliver",
            Self::Ack => "ack",
            Self::Nack => "nack",
            Self::Credit => "credit",
            Self::Ping => "ping",
            Self::Pong => "pong",
            Self::Error => "error",
            Self::Close => "close",
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl TryFrom<u8> for Command {
    type Error = FrameError;

    fn try_from(b: u8) -> Result<Self, FrameError> {
        Ok(match b {
            0x01 => Self::Hello,
            0x02 => Self::Auth,
            0x10 => Self::Deliver,
            0x11 => Self::Ack,
            0x12 => Self::Nack,
            0x13 => Self::Credit,
            0x20 => Self::Ping,
            0x21 => Self::Pong,
            0x30 => Self::Error,
            0x31 => Self::Close,
            other => return Err(FrameError::Command(other)),
        })
    }
}

impl Frame<'_> {
    /// The frame's command byte.
    pub fn command(&self) -> Command {
        match self {
            Frame::Hello { .. } => Command::Hello,
            Frame::Auth { .. } => Command::Auth,
            Frame::Deliver(_) => Command::Deliver,
            Frame::Ack { .. } => Command::Ack,
            Frame::Nack { .. } => Command::Nack,
            Frame::Credit { .. } => Command::Credit,
            Frame::Ping { .. } => Command::Ping,
            Frame::Pong { .. } => Command::Pong,
            Frame::Error { .. } => Command::Error,
            Frame::Close { .. } => Command::Close,
        }
    }

    /// The payload length this frame encodes to (before any check of its limits).
    fn payload_len(&self) -> usize {
        match self {
            Frame::Hello { peer_id, .. } => HELLO_FIXED + peer_id.len(),
            Frame::Auth { .. } => AUTH_LEN,
            Frame::Deliver(d) => DELIVER_FIXED + d.body.len(),
            Frame::Ack { .. } => ACK_LEN,
            Frame::Nack { reason, .. } => NACK_FIXED + reason.len(),
            Frame::Credit { .. } => CREDIT_LEN,
            Frame::Ping { .. } | Frame::Pong { .. } => PING_LEN,
            Frame::Error { message: text, .. } | Frame::Close { reason: text, .. } => {
                TEXT_FIXED + text.len()
            }
        }
    }

    /// The number of bytes [`encode`] appends for this frame (header included).
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN.saturating_add(self.payload_len())
    }
}

/// Why a frame could not be decoded (or, for the last two variants, encoded).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer than [`HEADER_LEN`] bytes where a frame should start.
    #[error("short frame: a header needs {need} bytes, {have} present")]
    Short {
        /// Bytes a header needs.
        need: usize,
        /// Bytes present.
        have: usize,
    },
    /// The version byte is not [`VERSION`].
    #[error("unsupported protocol version {0} (this side speaks version {VERSION})")]
    Version(u8),
    /// The command byte is not a known [`Command`].
    #[error("unknown command 0x{0:02x}")]
    Command(u8),
    /// The length field is above the receiver's payload limit.
    #[error("frame payload of {len} bytes is above the limit of {max} bytes")]
    TooLong {
        /// The length field.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// The length field goes beyond the bytes present.
    #[error("truncated frame: the header announces {len} payload bytes, {have} present")]
    Truncated {
        /// The length field.
        len: u32,
        /// Payload bytes present after the header.
        have: usize,
    },
    /// The payload does not match its command's layout.
    #[error("malformed {command} payload: {what}")]
    Payload {
        /// The frame's command.
        command: Command,
        /// What is wrong with it.
        what: &'static str,
    },
    /// A text field is not valid UTF-8.
    #[error("invalid UTF-8 in the text of a {command} frame")]
    Utf8 {
        /// The frame's command.
        command: Command,
    },
    /// Encoding refused: a hello's peer id must be 1..=255 bytes.
    #[error("peer id of {len} bytes: it must be 1 to 255 bytes")]
    PeerIdLength {
        /// The peer id's length in bytes.
        len: usize,
    },
    /// Encoding refused: the payload does not fit the 4-byte length field.
    #[error(
        "{command} payload of {len} bytes does not fit a frame (at most {} bytes)",
        u32::MAX
    )]
    PayloadTooLarge {
        /// The frame's command.
        command: Command,
        /// The payload's length.
        len: usize,
    },
}

impl FrameError {
    /// The protocol error code to send in an `Error` frame when a received frame fails this way.
    /// (The two encoding errors are bugs of this side: [`ERR_INTERNAL`].)
    pub fn code(&self) -> u16 {
        match self {
            Self::Short { .. }
            | Self::TooLong { .. }
            | Self::Truncated { .. }
            | Self::Payload { .. }
            | Self::Utf8 { .. } => ERR_BAD_FRAME,
            Self::Version(_) => ERR_UNSUPPORTED_VERSION,
            Self::Command(_) => ERR_UNKNOWN_COMMAND,
            Self::PeerIdLength { .. } | Self::PayloadTooLarge { .. } => ERR_INTERNAL,
        }
    }
}

/// Appends one encoded frame to `out`. On error `out` is left as it was.
///
/// Refuses a hello whose peer id is empty or longer than 255 bytes, and any payload longer than
/// `u32::MAX` bytes. It does not apply the receiver's payload limit: that is the caller's business.
pub fn encode(frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<(), FrameError> {
    let command = frame.command();
    let id_len = match frame {
        Frame::Hello { peer_id, .. } => match u8::try_from(peer_id.len()) {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(FrameError::PeerIdLength { len: peer_id.len() });
            }
        },
        _ => 0,
    };
    let payload_len = frame.payload_len();
    let len = length_field(command, payload_len)?;
    out.reserve(HEADER_LEN + payload_len);
    out.push(VERSION);
    out.push(command as u8);
    out.extend_from_slice(&len.to_be_bytes());
    match *frame {
        Frame::Hello { nonce, peer_id } => {
            out.extend_from_slice(&nonce);
            out.push(id_len);
            out.extend_from_slice(peer_id.as_bytes());
        }
        Frame::Auth { proof } => out.extend_from_slice(&proof),
        Frame::Deliver(d) => {
            out.extend_from_slice(&d.partition.to_be_bytes());
            out.extend_from_slice(&d.epoch.to_be_bytes());
            out.extend_from_slice(&d.attempt.to_be_bytes());
            put_id(out, d.id);
            out.extend_from_slice(d.body);
        }
        Frame::Ack {
            partition,
            epoch,
            id,
        } => put_ack(out, partition, epoch, id),
        Frame::Nack {
            partition,
            epoch,
            id,
            reject,
            reason,
        } => {
            put_ack(out, partition, epoch, id);
            out.push(u8::from(reject));
            out.extend_from_slice(reason.as_bytes());
        }
        Frame::Credit { n } => out.extend_from_slice(&n.to_be_bytes()),
        Frame::Ping { token } | Frame::Pong { token } => {
            out.extend_from_slice(&token.to_be_bytes())
        }
        Frame::Error {
            code,
            message: text,
        }
        | Frame::Close { code, reason: text } => {
            out.extend_from_slice(&code.to_be_bytes());
            out.extend_from_slice(text.as_bytes());
        }
    }
    Ok(())
}

/// The header's length field for a payload of `len` bytes, or the refusal of a payload that does not fit.
fn length_field(command: Command, len: usize) -> Result<u32, FrameError> {
    u32::try_from(len).map_err(|_| FrameError::PayloadTooLarge { command, len })
}

fn put_id(out: &mut Vec<u8>, id: MessageId) {
    out.extend_from_slice(&id.ms.to_be_bytes());
    out.extend_from_slice(&id.seq.to_be_bytes());
}

fn put_ack(out: &mut Vec<u8>, partition: u16, epoch: u64, id: MessageId) {
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&epoch.to_be_bytes());
    put_id(out, id);
}

/// Decodes the frame at the start of `buf`; returns it and the number of bytes it took
/// (`HEADER_LEN + length`). Bytes after the frame are not looked at.
///
/// Checks, in order: a whole header, the version, the command, the length against `max_payload`, the
/// length against the bytes present, then the command's payload layout. Nothing is allocated: the
/// frame borrows from `buf`.
pub fn decode(buf: &[u8], max_payload: u32) -> Result<(Frame<'_>, usize), FrameError> {
    let Some((header, rest)) = buf.split_first_chunk::<HEADER_LEN>() else {
        return Err(FrameError::Short {
            need: HEADER_LEN,
            have: buf.len(),
        });
    };
    let [version, command, l0, l1, l2, l3] = *header;
    if version != VERSION {
        return Err(FrameError::Version(version));
    }
    let command = Command::try_from(command)?;
    let len = u32::from_be_bytes([l0, l1, l2, l3]);
    if len > max_payload {
        return Err(FrameError::TooLong {
            len,
            max: max_payload,
        });
    }
    // `len` fits a usize on every target this crate builds for (u32 → usize is lossless on 32 and
    // 64 bits); `get` refuses a length beyond the bytes present without slicing past them.
    let payload = usize::try_from(len)
        .ok()
        .and_then(|n| rest.get(..n))
        .ok_or(FrameError::Truncated {
            len,
            have: rest.len(),
        })?;
    let frame = decode_payload(command, payload)?;
    Ok((frame, HEADER_LEN + payload.len()))
}

/// Reads a payload field by field; every read is bounds-checked, so a short payload is an error.
struct Reader<'a> {
    buf: &'a [u8],
    command: Command,
}

impl<'a> Reader<'a> {
    fn bad(&self, what: &'static str) -> FrameError {
        FrameError::Payload {
            command: self.command,
            what,
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], FrameError> {
        let (head, rest) = self.buf.split_first_chunk::<N>().ok_or(self.bad(what))?;
        self.buf = rest;
        Ok(*head)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8, FrameError> {
        self.array::<1>(what).map(|[b]| b)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, FrameError> {
        self.array(what).map(u16::from_be_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, FrameError> {
        self.array(what).map(u32::from_be_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64, FrameError> {
        self.array(what).map(u64::from_be_bytes)
    }

    fn id(&mut self, what: &'static str) -> Result<MessageId, FrameError> {
        Ok(MessageId {
            ms: self.u64(what)?,
            seq: self.u64(what)?,
        })
    }

    fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], FrameError> {
        let (head, rest) = self.buf.split_at_checked(n).ok_or(self.bad(what))?;
        self.buf = rest;
        Ok(head)
    }

    /// The rest of the payload.
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// The rest of the payload as UTF-8 text.
    fn text(&mut self) -> Result<&'a str, FrameError> {
        let command = self.command;
        std::str::from_utf8(self.rest()).map_err(|_| FrameError::Utf8 { command })
    }

    /// Fails unless the payload is used up.
    fn end(&self, what: &'static str) -> Result<(), FrameError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.bad(what))
        }
    }
}

fn decode_payload(command: Command, payload: &[u8]) -> Result<Frame<'_>, FrameError> {
    let mut r = Reader {
        buf: payload,
        command,
    };
    // Fixed-size commands check their exact size first, so the error names the size.
    let exact = |n: usize, what: &'static str| {
        if payload.len() == n {
            Ok(())
        } else {
            Err(FrameError::Payload { command, what })
        }
    };
    let frame = match command {
        Command::Hello => {
            let nonce = r.array("hello payload shorter than nonce and id length (17 bytes)")?;
            let id_len = r.u8("hello payload shorter than nonce and id length (17 bytes)")?;
            if id_len == 0 {
                return Err(r.bad("empty peer id"));
            }
            let id = r.bytes(
                usize::from(id_len),
                "peer id longer than the rest of the payload",
            )?;
            r.end("trailing bytes after the peer id")?;
            let peer_id = std::str::from_utf8(id).map_err(|_| FrameError::Utf8 { command })?;
            Frame::Hello { nonce, peer_id }
        }
        Command::Auth => {
            exact(AUTH_LEN, "auth payload must be exactly 32 bytes")?;
            Frame::Auth {
                proof: r.array("auth payload must be exactly 32 bytes")?,
            }
        }
        Command::Deliver => {
            const WHAT: &str = "deliver payload shorter than its 28-byte fixed part";
            let partition = r.u16(WHAT)?;
            let epoch = r.u64(WHAT)?;
            let attempt = r.u16(WHAT)?;
            let id = r.id(WHAT)?;
            Frame::Deliver(Delivery {
                partition,
                epoch,
                attempt,
                id,
                body: r.rest(),
            })
        }
        Command::Ack => {
            const WHAT: &str = "ack payload must be exactly 26 bytes";
            exact(ACK_LEN, WHAT)?;
            Frame::Ack {
                partition: r.u16(WHAT)?,
                epoch: r.u64(WHAT)?,
                id: r.id(WHAT)?,
            }
        }
        Command::Nack => {
            const WHAT: &str = "nack payload shorter than its 27-byte fixed part";
            let partition = r.u16(WHAT)?;
            let epoch = r.u64(WHAT)?;
            let id = r.id(WHAT)?;
            let reject = match r.u8(WHAT)? {
                0 => false,
                1 => true,
                _ => return Err(r.bad("reject flag must be 0 or 1")),
            };
            Frame::Nack {
                partition,
                epoch,
                id,
                reject,
                reason: r.text()?,
            }
        }
        Command::Credit => {
            const WHAT: &str = "credit payload must be exactly 4 bytes";
            exact(CREDIT_LEN, WHAT)?;
            Frame::Credit { n: r.u32(WHAT)? }
        }
        Command::Ping => {
            const WHAT: &str = "ping payload must be exactly 8 bytes";
            exact(PING_LEN, WHAT)?;
            Frame::Ping {
                token: r.u64(WHAT)?,
            }
        }
        Command::Pong => {
            const WHAT: &str = "pong payload must be exactly 8 bytes";
            exact(PING_LEN, WHAT)?;
            Frame::Pong {
                token: r.u64(WHAT)?,
            }
        }
        Command::Error => Frame::Error {
            code: r.u16("error payload shorter than its 2-byte code")?,
            message: r.text()?,
        },
        Command::Close => Frame::Close {
            code: r.u16("close payload shorter than its 2-byte code")?,
            reason: r.text()?,
        },
    };
    Ok(frame)
}

/// Iterates the frames of one WebSocket binary message (several frames may share one message);
/// yields each frame or the first error, then stops. A message must hold only whole frames: bytes
/// left after the last whole frame are an error (`Short` or `Truncated`). An empty message yields
/// nothing.
pub fn frames(message: &[u8], max_payload: u32) -> Frames<'_> {
    Frames {
        rest: message,
        max_payload,
    }
}

/// The iterator [`frames`] returns.
#[derive(Debug, Clone)]
pub struct Frames<'a> {
    rest: &'a [u8],
    max_payload: u32,
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Frame<'a>, FrameError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        match decode(self.rest, self.max_payload) {
            Ok((frame, used)) => {
                self.rest = self.rest.get(used..).unwrap_or_default();
                Some(Ok(frame))
            }
            Err(e) => {
                self.rest = &[];
                Some(Err(e))
            }
        }
    }
}

impl FusedIterator for Frames<'_> {}

#[cfg(test)]
mod tests;

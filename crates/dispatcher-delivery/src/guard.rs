//! Limits on what a peer can make a link or a consumer hold before it has proved the shared secret: a
//! socket wrapper that refuses to read more than a small number of bytes until the hello/auth exchange
//! has passed, the WebSocket limits after it, and the split of outgoing frames into messages that fit
//! them (`docs/protocol.md`, "Limits").

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use dispatcher_wire::frame;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Bytes a peer may send before it has authenticated, the WebSocket upgrade included: the hello and
/// auth frames are under 400 bytes, an upgrade request or answer well under 4 KiB.
pub const PRE_AUTH_BYTES: usize = 64 * 1024;

/// The largest WebSocket message a sender puts frames in (unless one frame alone is larger, when it
/// travels alone): 16 MiB.
pub const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;

/// The largest WebSocket message (and WebSocket frame: messages go out unfragmented) a receiver whose
/// frame payload limit is `max_payload` accepts after authentication: a message of
/// [`MAX_MESSAGE_BYTES`], or one frame at that limit.
pub fn max_message(max_payload: u32) -> usize {
    MAX_MESSAGE_BYTES.max(max_payload as usize + frame::HEADER_LEN)
}

/// The WebSocket settings of a link or a consumer connection: message and frame limits at the protocol's
/// maximum for `max_payload`. Before authentication the [`Budgeted`] socket bounds what is read far
/// lower.
pub fn ws_config(max_payload: u32) -> WebSocketConfig {
    let max = max_message(max_payload);
    let mut c = WebSocketConfig::default();
    c.max_message_size = Some(max);
    c.max_frame_size = Some(max);
    c
}

/// Splits `bytes` (whole frames, back to back) into runs of at most [`MAX_MESSAGE_BYTES`], cutting only
/// between frames; a frame larger than that is a run of its own. Bytes that do not parse as a frame
/// header stay with the run they are in (the receiver refuses them either way).
pub fn split_messages(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut at = 0;
    while at < bytes.len() {
        let Some(len) = bytes
            .get(at + 2..at + frame::HEADER_LEN)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map(u32::from_be_bytes)
        else {
            break;
        };
        let end = at
            .saturating_add(frame::HEADER_LEN)
            .saturating_add(len as usize)
            .min(bytes.len());
        if end - start > MAX_MESSAGE_BYTES && at > start {
            out.push(&bytes[start..at]);
            start = at;
        }
        at = end;
    }
    out.push(&bytes[start..]);
    out
}

/// How many more bytes a [`Budgeted`] socket may read; `usize::MAX` once the peer authenticated.
#[derive(Debug, Clone)]
pub struct Budget(Arc<AtomicUsize>);

impl Budget {
    /// A budget of [`PRE_AUTH_BYTES`].
    pub fn pre_auth() -> Self {
        Budget(Arc::new(AtomicUsize::new(PRE_AUTH_BYTES)))
    }

    /// The peer proved the secret: no byte limit from here on (the WebSocket limits still apply).
    pub fn lift(&self) {
        self.0.store(usize::MAX, Ordering::Release);
    }
}

/// A socket that fails a read once its [`Budget`] is spent, so a peer that has not authenticated cannot
/// make us buffer more than [`PRE_AUTH_BYTES`] whatever message size it announces.
#[derive(Debug)]
pub struct Budgeted<S> {
    inner: S,
    budget: Budget,
}

impl<S> Budgeted<S> {
    pub fn new(inner: S, budget: Budget) -> Self {
        Budgeted { inner, budget }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Budgeted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let left = self.budget.0.load(Ordering::Acquire);
        if left == usize::MAX {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        if left == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {PRE_AUTH_BYTES} bytes before authentication"),
            )));
        }
        let mut tmp = vec![0u8; left.min(buf.remaining()).min(8 * 1024)];
        let mut small = ReadBuf::new(&mut tmp);
        match Pin::new(&mut self.inner).poll_read(cx, &mut small) {
            Poll::Ready(Ok(())) => {
                let n = small.filled().len();
                buf.put_slice(small.filled());
                // Lifted meanwhile: stays lifted.
                let _ = self
                    .budget
                    .0
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |l| {
                        (l != usize::MAX).then(|| l.saturating_sub(n))
                    });
                Poll::Ready(Ok(()))
            }
            other => other,
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Budgeted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn frame_of(len: usize) -> Vec<u8> {
        let mut f = vec![1u8, 0x10];
        f.extend_from_slice(&(len as u32).to_be_bytes());
        f.resize(frame::HEADER_LEN + len, 7);
        f
    }

    #[test]
    fn splits_between_frames_only() {
        let small = frame_of(100);
        assert_eq!(split_messages(&small), vec![&small[..]]);
        let big = frame_of(MAX_MESSAGE_BYTES / 2);
        let mut three = big.clone();
        three.extend_from_slice(&big);
        three.extend_from_slice(&small);
        let runs = split_messages(&three);
        assert_eq!(
            runs.len(),
            2,
            "two halves do not fit one message with the headers"
        );
        assert_eq!(runs[0].len(), big.len());
        assert_eq!(runs[1].len(), big.len() + small.len());
        assert_eq!(runs.concat(), three, "nothing lost, nothing reordered");
        let huge = frame_of(MAX_MESSAGE_BYTES + 10);
        let mut two = small.clone();
        two.extend_from_slice(&huge);
        let runs = split_messages(&two);
        assert_eq!(
            runs,
            vec![&small[..], &huge[..]],
            "an oversized frame travels alone"
        );
        assert!(
            runs.iter()
                .all(|r| r.len() <= max_message(MAX_MESSAGE_BYTES as u32 + 10))
        );
        assert_eq!(split_messages(&[]), vec![&[0u8; 0][..]]);
        assert_eq!(
            split_messages(&[1, 2, 3]),
            vec![&[1u8, 2, 3][..]],
            "junk stays"
        );
    }

    #[tokio::test]
    async fn reads_stop_at_the_budget_until_lifted() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let budget = Budget::pre_auth();
        let mut r = Budgeted::new(b, budget.clone());
        a.write_all(&vec![0u8; PRE_AUTH_BYTES + 10])
            .await
            .expect("write");
        let mut got = vec![0u8; PRE_AUTH_BYTES];
        r.read_exact(&mut got).await.expect("the budget's worth");
        let e = r.read(&mut [0u8; 16]).await.expect_err("over the budget");
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        budget.lift();
        let mut rest = [0u8; 10];
        r.read_exact(&mut rest).await.expect("lifted: no limit");
    }
}

//! A minimal HTTP/1.1 client for load generation: keep-alive connections bound to chosen loopback source
//! addresses, requests written when they are due (pipelined, so the generator stays open-loop), responses
//! parsed in order. Also reads server-sent-event streams. Only what the benchmarks need: `Content-Length`
//! and chunked bodies, no TLS, no redirects.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::BenchError;

/// The `n`-th loopback source address: 127.1.0.1, 127.1.0.2, … (distinct clients to the server's limits).
pub fn source_addr(n: usize) -> IpAddr {
    let n = n as u32 + 1;
    IpAddr::V4(Ipv4Addr::new(
        127,
        1 + (n >> 16) as u8,
        (n >> 8) as u8,
        n as u8,
    ))
}

/// Connects to `server` from `source` (any port).
pub async fn connect_from(source: IpAddr, server: SocketAddr) -> Result<TcpStream, BenchError> {
    let sock = TcpSocket::new_v4().map_err(|e| BenchError::Setup(format!("socket: {e}")))?;
    sock.bind(SocketAddr::new(source, 0))
        .map_err(|e| BenchError::Setup(format!("binding {source}: {e}")))?;
    let s = sock
        .connect(server)
        .await
        .map_err(|e| BenchError::Setup(format!("connecting to {server} from {source}: {e}")))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Body bytes.
    pub body: Vec<u8>,
}

/// Reads responses from a byte stream, in order.
#[derive(Debug)]
pub struct ResponseReader<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
}

impl<R: AsyncRead + Unpin> ResponseReader<R> {
    /// A reader over `r`.
    pub fn new(r: R) -> Self {
        Self {
            r,
            buf: Vec::with_capacity(64 * 1024),
            start: 0,
        }
    }

    async fn fill(&mut self) -> Result<(), BenchError> {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        } else if self.start > 32 * 1024 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = self
            .r
            .read(&mut chunk)
            .await
            .map_err(|e| BenchError::Run(format!("read: {e}")))?;
        if n == 0 {
            return Err(BenchError::Run("connection closed by the server".into()));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads a line ending in CRLF (without it).
    async fn line(&mut self) -> Result<Vec<u8>, BenchError> {
        loop {
            if let Some(p) = find(&self.buf[self.start..], b"\r\n") {
                let line = self.buf[self.start..self.start + p].to_vec();
                self.start += p + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    async fn exact(&mut self, n: usize) -> Result<Vec<u8>, BenchError> {
        while self.buf.len() - self.start < n {
            self.fill().await?;
        }
        let v = self.buf[self.start..self.start + n].to_vec();
        self.start += n;
        Ok(v)
    }

    /// Reads the status line and headers: (status, content length, chunked). Parses in place, without
    /// allocating per line (the generator's CPU is part of what a loopback benchmark measures).
    pub async fn head(&mut self) -> Result<(u16, Option<usize>, bool), BenchError> {
        let end = loop {
            if let Some(p) = find(&self.buf[self.start..], b"\r\n\r\n") {
                break self.start + p;
            }
            self.fill().await?;
        };
        let head = &self.buf[self.start..end];
        let status = head
            .get(9..12)
            .and_then(|s| std::str::from_utf8(s).ok())
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| BenchError::Run("bad status line".into()))?;
        let mut len = None;
        let mut chunked = false;
        for line in head.split(|b| *b == b'\n').skip(1) {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(colon) = line.iter().position(|b| *b == b':') else {
                continue;
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            if name.eq_ignore_ascii_case(b"content-length") {
                len = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            } else if name.eq_ignore_ascii_case(b"transfer-encoding")
                && value.eq_ignore_ascii_case(b"chunked")
            {
                chunked = true;
            }
        }
        self.start = end + 4;
        Ok((status, len, chunked))
    }

    /// Skips one whole response, returning its status (the body is not copied).
    pub async fn skip_response(&mut self) -> Result<u16, BenchError> {
        let (status, len, chunked) = self.head().await?;
        if chunked {
            while self.chunk().await?.is_some() {}
        } else {
            let n = len.unwrap_or(0);
            while self.buf.len() - self.start < n {
                self.fill().await?;
            }
            self.start += n;
        }
        Ok(status)
    }

    /// Reads one whole response.
    pub async fn response(&mut self) -> Result<Response, BenchError> {
        let (status, len, chunked) = self.head().await?;
        let body = if chunked {
            let mut body = Vec::new();
            while let Some(c) = self.chunk().await? {
                body.extend_from_slice(&c);
            }
            body
        } else {
            self.exact(len.unwrap_or(0)).await?
        };
        Ok(Response { status, body })
    }

    /// Reads one chunk of a chunked body; `None` at the last chunk.
    pub async fn chunk(&mut self) -> Result<Option<Vec<u8>>, BenchError> {
        let size_line = self.line().await?;
        let size_text = String::from_utf8_lossy(&size_line);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| BenchError::Run("bad chunk size".into()))?;
        if size == 0 {
            let _ = self.line().await?;
            return Ok(None);
        }
        let data = self.exact(size).await?;
        let _ = self.line().await?;
        Ok(Some(data))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits a stream of server-sent-event bytes into events: (event name, data).
#[derive(Debug, Default)]
pub struct SseParser {
    pending: Vec<u8>,
}

impl SseParser {
    /// Feeds bytes; returns the complete events they finish.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<(String, String)> {
        self.pending.extend_from_slice(bytes);
        let mut out = Vec::new();
        while let Some(p) = find(&self.pending, b"\n\n") {
            let block: Vec<u8> = self.pending.drain(..p + 2).collect();
            let text = String::from_utf8_lossy(&block);
            let mut name = String::from("message");
            let mut data = String::new();
            let mut any = false;
            for line in text.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                    any = true;
                } else if let Some(v) = line.strip_prefix("data:") {
                    if !data.is_empty() {
                        data.push('\n');
                    }
                    data.push_str(v.strip_prefix(' ').unwrap_or(v));
                    any = true;
                }
            }
            if any {
                out.push((name, data));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parses_pipelined_and_chunked_responses() {
        let wire = b"HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\n{}HTTP/1.1 429 Too Many Requests\r\nContent-Length: 0\r\nretry-after: 1\r\n\r\nHTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let mut r = ResponseReader::new(&wire[..]);
        let a = r.response().await.expect("first");
        assert_eq!((a.status, a.body.as_slice()), (201, &b"{}"[..]));
        assert_eq!(r.response().await.expect("second").status, 429);
        let c = r.response().await.expect("third");
        assert_eq!((c.status, c.body.as_slice()), (200, &b"abc"[..]));
        assert!(r.response().await.is_err(), "end of stream");
    }

    #[test]
    fn sse_events_split_across_feeds() {
        let mut p = SseParser::default();
        assert!(p.feed(b"event: position\ndata: {\"a\"").is_empty());
        let ev = p.feed(b":1}\n\n: keep-alive\n\nevent: admitted\ndata: x\n\n");
        assert_eq!(
            ev,
            vec![
                ("position".to_owned(), "{\"a\":1}".to_owned()),
                ("admitted".to_owned(), "x".to_owned())
            ]
        );
    }

    #[test]
    fn source_addresses_are_distinct_loopback() {
        assert_eq!(source_addr(0).to_string(), "127.1.0.1");
        assert_eq!(source_addr(255).to_string(), "127.1.1.0");
        assert_ne!(source_addr(1000), source_addr(1001));
    }
}

//! A minimal blocking RESP2 client, enough for readiness checks and test assertions.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

use crate::error::{Error, Result};

/// How long connecting, reading and writing may each take.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RespValue {
    /// `+OK`
    Simple(String),
    /// `-ERR ...` (only seen nested inside arrays: a top-level error reply is [`Error::Redis`]).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<RespValue>),
}

impl RespValue {
    /// The value as text: simple strings, bulk strings (lossy UTF-8) and integers.
    pub fn as_text(&self) -> Option<String> {
        match self {
            Self::Simple(s) => Some(s.clone()),
            Self::Bulk(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Self::Integer(i) => Some(i.to_string()),
            _ => None,
        }
    }

    /// The value as an integer, if it is one.
    pub fn as_int(&self) -> Option<i64> {
        match self {
            Self::Integer(i) => Some(*i),
            _ => None,
        }
    }

    /// The elements, if the value is an array.
    pub fn as_array(&self) -> Option<&[RespValue]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }

    /// Whether this is the nil reply.
    pub fn is_nil(&self) -> bool {
        matches!(self, Self::Nil)
    }
}

/// A connection to one Redis server.
#[derive(Debug)]
pub struct RespConnection {
    reader: BufReader<TcpStream>,
}

impl RespConnection {
    /// Connects to `addr` (e.g. `"127.0.0.1:6379"`) with 10 s I/O timeouts.
    pub fn connect(addr: impl ToSocketAddrs + std::fmt::Debug) -> Result<Self> {
        let context = || format!("connect to redis at {addr:?}");
        let sockaddr = addr
            .to_socket_addrs()
            .map_err(|e| Error::io(context(), e))?
            .next()
            .ok_or_else(|| Error::Protocol(format!("{addr:?} resolves to no address")))?;
        let stream = TcpStream::connect_timeout(&sockaddr, IO_TIMEOUT)
            .map_err(|e| Error::io(context(), e))?;
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .and_then(|()| stream.set_write_timeout(Some(IO_TIMEOUT)))
            .and_then(|()| stream.set_nodelay(true))
            .map_err(|e| Error::io(context(), e))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one command and reads its reply. An error reply becomes [`Error::Redis`].
    pub fn command(&mut self, args: &[&str]) -> Result<RespValue> {
        if args.is_empty() {
            return Err(Error::Protocol("empty command".into()));
        }
        let mut buf = format!("*{}\r\n", args.len()).into_bytes();
        for arg in args {
            buf.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
            buf.extend_from_slice(arg.as_bytes());
            buf.extend_from_slice(b"\r\n");
        }
        self.reader
            .get_mut()
            .write_all(&buf)
            .map_err(|e| Error::io(format!("send {}", args[0]), e))?;
        match self.read_value()? {
            RespValue::Error(message) => Err(Error::Redis(message)),
            value => Ok(value),
        }
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = Vec::new();
        self.reader
            .read_until(b'\n', &mut line)
            .map_err(|e| Error::io("read redis reply", e))?;
        if !line.ends_with(b"\r\n") {
            return Err(Error::Protocol(format!(
                "connection closed or line not terminated by CRLF: {:?}",
                String::from_utf8_lossy(&line)
            )));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|e| Error::Protocol(format!("non-UTF-8 line: {e}")))
    }

    fn read_value(&mut self) -> Result<RespValue> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at_checked(1).unwrap_or(("", ""));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| Error::Protocol(format!("bad number in {line:?}")))
        };
        match kind {
            "+" => Ok(RespValue::Simple(rest.to_owned())),
            "-" => Ok(RespValue::Error(rest.to_owned())),
            ":" => Ok(RespValue::Integer(number()?)),
            "$" => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(RespValue::Nil);
                };
                let mut data = vec![0; len + 2];
                self.reader
                    .read_exact(&mut data)
                    .map_err(|e| Error::io("read redis bulk string", e))?;
                if !data.ends_with(b"\r\n") {
                    return Err(Error::Protocol("bulk string not terminated by CRLF".into()));
                }
                data.truncate(len);
                Ok(RespValue::Bulk(data))
            }
            "*" => {
                let Ok(len) = usize::try_from(number()?) else {
                    return Ok(RespValue::Nil);
                };
                let items = (0..len)
                    .map(|_| self.read_value())
                    .collect::<Result<Vec<_>>>()?;
                Ok(RespValue::Array(items))
            }
            _ => Err(Error::Protocol(format!("unexpected reply line {line:?}"))),
        }
    }
}

/// Opens a connection to `addr`, sends one command and returns its reply.
pub fn command(addr: impl ToSocketAddrs + std::fmt::Debug, args: &[&str]) -> Result<RespValue> {
    RespConnection::connect(addr)?.command(args)
}

//! `dispatcher token …`: check an entry token offline (as a shop would) and manage the signing keys.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use clap::Subcommand;
use dispatcher_token::{KeyRing, Verifier};

/// An entry token given on the command line. `Debug` cuts it: its payload holds the whole ticket id.
#[derive(Clone)]
pub struct TokenArg(String);

impl std::str::FromStr for TokenArg {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for TokenArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenArg({:?})", dispatcher_admission::Redacted(&self.0))
    }
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Verify a token offline against a JWKS (a file, or `http://` URL) or a key directory. Exit 0 and the
    /// claims as JSON when valid; exit 1 and the reason's code when not.
    Verify {
        /// The token (or `-` to read it from standard input).
        token: TokenArg,
        /// A JWKS document: a file path or an `http://host:port/.well-known/jwks.json` URL.
        #[arg(long, conflicts_with = "keys")]
        jwks: Option<String>,
        /// A key directory (the server's `http.key_dir`).
        #[arg(long)]
        keys: Option<PathBuf>,
        /// The event the token must be for.
        #[arg(long)]
        event: Option<String>,
        /// Tolerated clock skew, seconds.
        #[arg(long, default_value_t = 5)]
        leeway: u64,
    },
    /// Add a signing key to a key directory (rotation). It is published at once and signs new admissions
    /// from `--active-in` seconds on, so every server has reloaded it first.
    Rotate {
        #[arg(long)]
        keys: PathBuf,
        #[arg(long, default_value_t = 30)]
        active_in: u64,
    },
    /// Remove a key from a key directory (its tokens stop verifying).
    Remove {
        #[arg(long)]
        keys: PathBuf,
        kid: String,
    },
    /// List the keys of a key directory.
    List {
        #[arg(long)]
        keys: PathBuf,
    },
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Verify {
            token,
            jwks,
            keys,
            event,
            leeway,
        } => {
            let token = if token.0 == "-" {
                let mut s = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                    .context("reading the token from standard input")?;
                s.trim().to_owned()
            } else {
                token.0
            };
            let verifier = match (jwks, keys) {
                (Some(src), None) => {
                    let body = if src.starts_with("http://") {
                        fetch_http(&src)?
                    } else if src.starts_with("https://") {
                        bail!(
                            "https JWKS URLs are not fetched by this command; download the JWKS and pass the file"
                        )
                    } else {
                        std::fs::read(&src)
                            .with_context(|| format!("reading the JWKS file {src}"))?
                    };
                    Verifier::from_jwks_json(&body).context("parsing the JWKS")?
                }
                (None, Some(dir)) => KeyRing::load(&dir)
                    .with_context(|| format!("loading keys from {}", dir.display()))?
                    .verifier(),
                _ => bail!("give --jwks FILE|URL or --keys DIR"),
            };
            match verifier.verify(&token, event.as_deref(), now_s(), leeway) {
                Ok(claims) => {
                    println!("{}", serde_json::to_string(&claims)?);
                    Ok(())
                }
                Err(e) => {
                    eprintln!("invalid token: {} ({e})", e.code());
                    std::process::exit(1);
                }
            }
        }
        TokenCommand::Rotate { keys, active_in } => {
            KeyRing::load_or_generate(&keys)
                .with_context(|| format!("opening the key directory {}", keys.display()))?;
            let from = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0)
                + active_in * 1000;
            let kid = KeyRing::add_key_active_from(&keys, from).context("adding a key")?;
            println!("{kid}");
            Ok(())
        }
        TokenCommand::Remove { keys, kid } => {
            KeyRing::remove_key(&keys, &kid).with_context(|| format!("removing key {kid}"))?;
            Ok(())
        }
        TokenCommand::List { keys } => {
            let ring = KeyRing::load(&keys)
                .with_context(|| format!("loading keys from {}", keys.display()))?;
            for k in ring.keys() {
                println!("{}\tactive_from_ms={}", k.kid, k.active_from_ms);
            }
            Ok(())
        }
    }
}

/// A plain HTTP GET (the JWKS of a server on a trusted network), at most 1 MiB.
fn fetch_http(url: &str) -> anyhow::Result<Vec<u8>> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").context("not an http URL")?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/.well-known/jwks.json"),
    };
    let mut s = std::net::TcpStream::connect(hostport)
        .with_context(|| format!("connecting to {hostport}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {hostport}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut buf = Vec::new();
    s.take(1 << 20).read_to_end(&mut buf)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no HTTP header end in the answer")?;
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        bail!(
            "the JWKS URL answered {}",
            head.lines().next().unwrap_or("")
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        bail!("chunked JWKS answers are not supported here; download the JWKS and pass the file");
    }
    Ok(buf[split + 4..].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: TokenCommand,
    }

    #[test]
    fn a_token_argument_is_cut_in_debug() {
        let token = "eyJ0eXAiOiJKV1QifQ.eyJqdGkiOiIwMTIzNDU2Nzg5YWJjZGVmIn0.c2lnbmF0dXJl";
        let cli = Cli::try_parse_from(["token", "verify", token, "--keys", "/k"]).expect("parses");
        let dbg = format!("{cli:?} {cli:#?}");
        assert!(!dbg.contains(token), "{dbg}");
        assert!(dbg.contains("\"eyJ0eX…\""), "{dbg}");
        let TokenCommand::Verify { token: arg, .. } = cli.cmd else {
            panic!("not a verify command: {cli:?}");
        };
        assert_eq!(arg.0, token, "the value itself is kept whole");
    }
}

//! The HTTP edge of the real `serve` binary under a crowd of idle and slow sockets: with only 256 open
//! files allowed, 300 connections that send nothing, half a header or a body slower than its
//! `Content-Length` must not starve other clients, and each kind of slow socket is closed by its timeout.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{self, Children, TempDir};

/// Connects to `addr` from the loopback address `from` (any 127.x address is ours on Linux).
async fn connect_from(from: &str, addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{from}:0").parse().expect("source address"))?;
    socket.connect(addr).await
}

/// One request from `from`; the status code, or `None` when no answer came within 5 s.
async fn status_from(from: &str, addr: std::net::SocketAddr, request: &str) -> Option<u16> {
    let exchange = async {
        let mut tcp = connect_from(from, addr).await.ok()?;
        tcp.write_all(request.as_bytes()).await.ok()?;
        let mut answer = Vec::new();
        tcp.read_to_end(&mut answer).await.ok()?;
        let text = String::from_utf8_lossy(&answer).into_owned();
        text.split_whitespace().nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .ok()
        .flatten()
}

/// Whether the server closes `tcp` within `within` (reads end or fail); bytes it sends first are fine.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_sockets_do_not_starve_other_clients_of_a_256_file_process() {
    let redis = testkit::RedisServer::start().expect("spawn redis-server");
    let port = testkit::free_port().expect("a free port");
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    let dir = TempDir::new("edge");
    let config = dir.file(
        "dispatcher.toml",
        "[http]\njoin_rate_per_ip = 100.0\njoin_burst_per_ip = 100.0\n\n\
         [[events]]\nid = \"crowd\"\ncapacity = 5\nsession_ttl_ms = 60000\n",
    );
    // The binary under a 256-file limit: the shell lowers it, then becomes the server.
    let serve = support::serve(&redis.url(), &format!("edge{}", std::process::id()));
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("ulimit -n 256 && exec \"$0\" serve --config \"$1\"")
        .arg(support::BIN)
        .arg(&config);
    for (k, v) in serve.get_envs() {
        match v {
            Some(v) => cmd.env(k, v),
            None => cmd.env_remove(k),
        };
    }
    cmd.env("DISPATCHER_HTTP_ADDR", addr.to_string())
        .env("DISPATCHER_HTTP_HEADER_TIMEOUT_MS", "1500")
        .env("DISPATCHER_HTTP_BODY_TIMEOUT_MS", "1500")
        .env("DISPATCHER_HTTP_IDLE_TIMEOUT_MS", "3000")
        .env("DISPATCHER_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut children = Children::default();
    let server = children.spawn(&mut cmd);
    let mut stderr = server.stderr.take().expect("stderr");
    let log = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut s);
        s
    });

    let healthz = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(20);
    while status_from("127.0.0.1", addr, healthz).await != Some(200) {
        if let Some(status) = server.try_wait().expect("try_wait") {
            panic!("dispatcher serve exited early with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "serve did not answer within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 300 hostile sockets from one address: 100 silent, 100 with half a header, 100 with a body that
    // stops short of its Content-Length.
    let mut hostile = Vec::new();
    for i in 0..300 {
        let Ok(mut tcp) = connect_from("127.0.0.1", addr).await else {
            continue;
        };
        let _ = match i % 3 {
            0 => Ok(()),
            1 => tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await,
            _ => {
                tcp.write_all(
                    b"POST /v1/events/crowd/tickets HTTP/1.1\r\nHost: x\r\n\
                      Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"us",
                )
                .await
            }
        };
        hostile.push(tcp);
    }

    // Other clients are answered at once, for health and for joins.
    for from in ["127.0.0.2", "127.0.0.3"] {
        assert_eq!(
            status_from(from, addr, healthz).await,
            Some(200),
            "/healthz from {from} while 300 idle sockets are open"
        );
        let join = "POST /v1/events/crowd/tickets HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
                    Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        assert_eq!(
            status_from(from, addr, join).await,
            Some(201),
            "a join from {from} while 300 idle sockets are open"
        );
    }

    // Each kind of slow socket is closed by its timeout (or was refused at once by the address cap).
    let mut open_after = 0;
    for tcp in &mut hostile {
        if !closed_within(tcp, Duration::from_secs(15)).await {
            open_after += 1;
        }
    }
    assert_eq!(open_after, 0, "every idle or slow socket is closed");

    // The hostile address can connect again once its sockets are gone.
    assert_eq!(status_from("127.0.0.1", addr, healthz).await, Some(200));
    drop(children);
    let log = log.join().expect("log reader");
    assert!(
        !log.contains("Too many open files"),
        "the process never ran out of descriptors: {log}"
    );
}

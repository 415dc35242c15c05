//! The hello/auth exchange and bad input on a link (docs/guarantees.md#push-delivery, docs/protocol.md): a
//! side that fails the proof is refused and sees no message; bad frames, a Deliver before the hello and a
//! wrong Auth are answered with an Error frame of the documented code and the connection closes; the handler
//! never runs. A raw client and a raw consumer speaking the documented bytes show both sides accept a correct
//! peer, respect credit and acknowledge.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatcher_delivery::consumer::ConsumerOptions;
use dispatcher_wire::frame::{self, Delivery, Frame, MessageId};
use dispatcher_wire::handshake::{self, Role};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{
    DEADLINE, Log, SECRET, Setup, TestHandler, consumer_options, leader_options, start_consumer,
    start_leader, wait_all_held, wait_until,
};

const WRONG_SECRET: &[u8] = b"not the shared secret, but as long";
/// How long a refused peer is watched to make sure it gets nothing.
const WATCH: Duration = Duration::from_secs(3);
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A TCP proxy in front of a consumer that counts the connections made through it; its target can be
/// switched to another consumer.
#[derive(Debug)]
struct Proxy {
    addr: SocketAddr,
    target: Arc<Mutex<SocketAddr>>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let target = Arc::new(Mutex::new(target));
        let accepted = Arc::new(AtomicU64::new(0));
        let (t, a) = (target.clone(), accepted.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::SeqCst);
                let to = *t.lock().expect("proxy target");
                tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            target,
            accepted,
            task,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/", self.addr)
    }

    fn retarget(&self, to: SocketAddr) {
        *self.target.lock().expect("proxy target") = to;
    }

    fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// No stream entry of any partition was read by the group: nothing pending, nothing delivered.
async fn assert_unread(s: &Setup) {
    for p in 0..s.keys.partitions {
        let g = crate::support::group_info(s, p).await;
        assert_eq!(
            g.get("pending").map(String::as_str),
            Some("0"),
            "partition {p}: {g:?}"
        );
        assert_eq!(
            g.get("last-delivered-id").map(String::as_str),
            Some("0-0"),
            "partition {p}: entries were read for a refused link: {g:?}"
        );
        if let Some(read) = g.get("entries-read") {
            assert!(
                read == "0" || read == "nil",
                "partition {p}: entries-read {read}"
            );
        }
    }
}

async fn publish_some(s: &Setup, n: usize) -> Vec<(u16, MessageId)> {
    let ids = s.publish_many(n).await;
    assert_eq!(ids.len(), n);
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_another_secret_is_refused_and_sees_no_message() {
    let s = Setup::new(2).await;
    let ids = publish_some(&s, 20).await;
    let log = Arc::new(Log::default());
    let bad = start_consumer(
        &s,
        consumer_options("impostor", WRONG_SECRET),
        TestHandler::ok("impostor", log.clone()),
    )
    .await;
    let proxy = Proxy::start(bad.addr).await;
    let leader = start_leader(&s, leader_options("leader", vec![proxy.url()], SECRET)).await;
    wait_all_held(&s).await;

    // The leader dials, is refused, redials with backoff: no message ever reaches the consumer.
    wait_until(
        DEADLINE,
        "the leader dialled the consumer twice",
        || async { proxy.accepted() >= 2 },
    )
    .await;
    tokio::time::sleep(WATCH).await;
    assert_eq!(log.total_runs(), 0, "the refused consumer's handler ran");
    assert_unread(&s).await;
    assert_eq!(s.done_count(&ids).await, 0);
    let dialled = proxy.accepted();
    assert!(dialled >= 2, "dialled {dialled} times");

    // Control: the same address with the right secret gets everything.
    bad.stop().await;
    let good = start_consumer(
        &s,
        consumer_options("worker", SECRET),
        TestHandler::ok("worker", log.clone()),
    )
    .await;
    proxy.retarget(good.addr);
    wait_until(DEADLINE, "every message is done", || async {
        s.done_count(&ids).await == ids.len()
    })
    .await;
    let twice: Vec<_> = log
        .runs()
        .into_iter()
        .filter(|(_, r)| r.len() > 1)
        .collect();
    assert!(twice.is_empty(), "handler ran more than once: {twice:?}");
    assert!(
        log.runs()
            .values()
            .flatten()
            .all(|r| r.consumer == "worker")
    );
    leader.stop().await;
    good.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_with_another_secret_is_refused_and_delivers_nothing() {
    let s = Setup::new(2).await;
    let ids = publish_some(&s, 20).await;
    let log = Arc::new(Log::default());
    let consumer = start_consumer(
        &s,
        consumer_options("worker", SECRET),
        TestHandler::ok("worker", log.clone()),
    )
    .await;
    let proxy = Proxy::start(consumer.addr).await;
    let bad = start_leader(
        &s,
        leader_options("impostor", vec![proxy.url()], WRONG_SECRET),
    )
    .await;
    wait_all_held(&s).await;
    wait_until(
        DEADLINE,
        "the leader dialled the consumer twice",
        || async { proxy.accepted() >= 2 },
    )
    .await;
    tokio::time::sleep(WATCH).await;
    assert_eq!(log.total_runs(), 0, "a message from a refused leader ran");
    assert_unread(&s).await;
    assert_eq!(s.done_count(&ids).await, 0);

    // Control: a leader with the right secret delivers everything to the same consumer.
    bad.stop().await;
    let good = start_leader(&s, leader_options("leader", vec![proxy.url()], SECRET)).await;
    wait_until(DEADLINE, "every message is done", || async {
        s.done_count(&ids).await == ids.len()
    })
    .await;
    assert_eq!(log.ran_twice(), vec![], "a handler ran more than once");
    good.stop().await;
    consumer.stop().await;
}

// ---------------------------------------------------------------------------------------------------
// Raw peers speaking the documented bytes.

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A frame as an owned value, for assertions.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Hello {
        nonce: [u8; 16],
        id: String,
    },
    Auth([u8; 32]),
    Deliver {
        p: u16,
        epoch: u64,
        attempt: u16,
        id: MessageId,
        body: Vec<u8>,
    },
    Ack {
        p: u16,
        epoch: u64,
        id: MessageId,
    },
    Nack {
        p: u16,
        epoch: u64,
        id: MessageId,
        reject: bool,
    },
    Credit(u32),
    Ping(u64),
    Pong(u64),
    Error(u16, String),
    Close(u16),
}

fn decode_all(bytes: &[u8]) -> Vec<Got> {
    frame::frames(bytes, frame::DEFAULT_MAX_PAYLOAD)
        .map(
            |f| match f.expect("a peer sent a frame that does not decode") {
                Frame::Hello { nonce, peer_id } => Got::Hello {
                    nonce,
                    id: peer_id.to_owned(),
                },
                Frame::Auth { proof } => Got::Auth(proof),
                Frame::Deliver(d) => Got::Deliver {
                    p: d.partition,
                    epoch: d.epoch,
                    attempt: d.attempt,
                    id: d.id,
                    body: d.body.to_vec(),
                },
                Frame::Ack {
                    partition,
                    epoch,
                    id,
                } => Got::Ack {
                    p: partition,
                    epoch,
                    id,
                },
                Frame::Nack {
                    partition,
                    epoch,
                    id,
                    reject,
                    ..
                } => Got::Nack {
                    p: partition,
                    epoch,
                    id,
                    reject,
                },
                Frame::Credit { n } => Got::Credit(n),
                Frame::Ping { token } => Got::Ping(token),
                Frame::Pong { token } => Got::Pong(token),
                Frame::Error { code, message } => Got::Error(code, message.to_owned()),
                Frame::Close { code, .. } => Got::Close(code),
            },
        )
        .collect()
}

fn enc(frames: &[Frame<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for f in frames {
        frame::encode(f, &mut out).expect("encode a test frame");
    }
    out
}

async fn send(ws: &mut Ws, bytes: Vec<u8>) {
    ws.send(WsMessage::Binary(bytes.into()))
        .await
        .expect("send a WebSocket message");
}

/// The frames of the next binary message, skipping WebSocket control messages and protocol pings;
/// `None` when the connection ended.
async fn recv(ws: &mut Ws, within: Duration) -> Option<Vec<Got>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("the peer neither answered nor hung up in time");
        match msg {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return None,
            Some(Ok(WsMessage::Binary(b))) => {
                let got: Vec<Got> = decode_all(&b)
                    .into_iter()
                    .filter(|g| !matches!(g, Got::Ping(_) | Got::Pong(_)))
                    .collect();
                if !got.is_empty() {
                    return Some(got);
                }
            }
            Some(Ok(WsMessage::Text(t))) => panic!("a text message: {t}"),
            Some(Ok(_)) => {}
        }
    }
}

/// The next message must be `Error{code}` + `Close{code}`, and then the connection must end.
async fn expect_refused(ws: &mut Ws, code: u16, case: &str) {
    let got = recv(ws, READ_TIMEOUT)
        .await
        .unwrap_or_else(|| panic!("{case}: hung up without an Error frame"));
    assert!(
        matches!(got.first(), Some(Got::Error(c, _)) if *c == code),
        "{case}: expected Error{{{code}}}, got {got:?}"
    );
    assert_eq!(
        got.get(1),
        Some(&Got::Close(code)),
        "{case}: the Error is followed by a Close with its code: {got:?}"
    );
    assert_eq!(got.len(), 2, "{case}: nothing after the Close: {got:?}");
    if let Some(more) = recv(ws, READ_TIMEOUT).await {
        panic!("{case}: the connection stayed open and sent {more:?}");
    }
}

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url)
        .await
        .expect("connect to the consumer")
        .0
}

/// A raw dispatcher's hello; returns the consumer's nonce, id and proof.
async fn raw_hello(ws: &mut Ws, nonce_d: [u8; 16], id: &str) -> ([u8; 16], String, [u8; 32]) {
    send(
        ws,
        enc(&[Frame::Hello {
            nonce: nonce_d,
            peer_id: id,
        }]),
    )
    .await;
    let got = recv(ws, READ_TIMEOUT)
        .await
        .expect("the consumer answers a hello");
    match got.as_slice() {
        [Got::Hello { nonce, id }, Got::Auth(proof)] => (*nonce, id.clone(), *proof),
        other => panic!("the consumer's hello is Hello + Auth in one message, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_answers_bad_input_before_auth_with_an_error_and_hangs_up() {
    let s = Setup::new(1).await;
    let id = s.publish(0, "real message").await;
    let log = Arc::new(Log::default());
    let c = start_consumer(
        &s,
        consumer_options("worker", SECRET),
        TestHandler::ok("worker", log.clone()),
    )
    .await;
    let deliver = Frame::Deliver(Delivery {
        partition: 0,
        epoch: 1,
        attempt: 1,
        id,
        body: b"real message",
    });

    // Bytes that are no frame: each with the code docs/protocol.md gives.
    let garbage: [(&str, Vec<u8>, u16); 6] = [
        ("short", vec![0x01], frame::ERR_BAD_FRAME),
        (
            "text",
            b"GET / HTTP/1.1 garbage".to_vec(),
            frame::ERR_UNSUPPORTED_VERSION,
        ),
        (
            "unknown command",
            vec![0x01, 0x99, 0, 0, 0, 0],
            frame::ERR_UNKNOWN_COMMAND,
        ),
        (
            "4 GB length",
            vec![0x01, 0x10, 0xff, 0xff, 0xff, 0xff],
            frame::ERR_BAD_FRAME,
        ),
        (
            "truncated",
            vec![0x01, 0x13, 0, 0, 0, 4, 0],
            frame::ERR_BAD_FRAME,
        ),
        (
            "bad hello",
            vec![
                0x01, 0x01, 0, 0, 0, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            ],
            frame::ERR_BAD_FRAME,
        ),
    ];
    for (case, bytes, code) in garbage {
        let mut ws = connect(&c.url).await;
        send(&mut ws, bytes).await;
        expect_refused(&mut ws, code, case).await;
    }

    // Well-formed frames before the hello: a protocol violation.
    for (case, f) in [
        ("deliver before hello", deliver),
        ("credit before hello", Frame::Credit { n: 5 }),
        (
            "ack before hello",
            Frame::Ack {
                partition: 0,
                epoch: 1,
                id,
            },
        ),
    ] {
        let mut ws = connect(&c.url).await;
        send(&mut ws, enc(&[f])).await;
        expect_refused(&mut ws, frame::ERR_PROTOCOL_VIOLATION, case).await;
    }
    // A hello followed by a Deliver in the same message: the Deliver still comes before the auth.
    let mut ws = connect(&c.url).await;
    send(
        &mut ws,
        enc(&[
            Frame::Hello {
                nonce: handshake::new_nonce(),
                peer_id: "raw",
            },
            deliver,
        ]),
    )
    .await;
    expect_refused(&mut ws, frame::ERR_PROTOCOL_VIOLATION, "hello + deliver").await;

    // A hello, then a wrong Auth: refused with code 4.
    let wrong_proofs: [(&str, MakeProof); 3] = [
        ("random proof", |_, _, _, _| rand_proof()),
        ("its own proof sent back", |_, _, _, own| own),
        ("proof with another secret", |nd, nc, cid, _| {
            handshake::proof(WRONG_SECRET, Role::Dispatcher, nd, nc, "raw", cid)
        }),
    ];
    for (case, make) in wrong_proofs {
        let mut ws = connect(&c.url).await;
        let nonce_d = handshake::new_nonce();
        let (nonce_c, cid, proof_c) = raw_hello(&mut ws, nonce_d, "raw").await;
        assert_eq!(cid, "worker");
        let proof = make(&nonce_d, &nonce_c, &cid, proof_c);
        send(&mut ws, enc(&[Frame::Auth { proof }, deliver])).await;
        expect_refused(&mut ws, frame::ERR_AUTH_FAILED, case).await;
    }
    // A proof made for another connection's nonces (a replay) fails too.
    let mut ws1 = connect(&c.url).await;
    let nd1 = handshake::new_nonce();
    let (nc1, cid, _) = raw_hello(&mut ws1, nd1, "raw").await;
    let recorded = handshake::proof(SECRET, Role::Dispatcher, &nd1, &nc1, "raw", &cid);
    let mut ws2 = connect(&c.url).await;
    let _ = raw_hello(&mut ws2, nd1, "raw").await;
    send(&mut ws2, enc(&[Frame::Auth { proof: recorded }])).await;
    expect_refused(&mut ws2, frame::ERR_AUTH_FAILED, "replayed proof").await;
    drop(ws1);

    assert_eq!(
        log.total_runs(),
        0,
        "the handler ran for an unauthenticated peer"
    );
    assert_eq!(s.store.result(0, id).await.expect("result"), None);
    c.stop().await;
}

/// Makes an Auth proof from the nonces, the consumer's id and the consumer's own proof.
type MakeProof = fn(&[u8; 16], &[u8; 16], &str, [u8; 32]) -> [u8; 32];

fn rand_proof() -> [u8; 32] {
    let mut p = [0u8; 32];
    for (i, b) in handshake::new_nonce()
        .iter()
        .chain(handshake::new_nonce().iter())
        .enumerate()
    {
        p[i] = *b;
    }
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_answers_a_bad_frame_in_place_of_auth_with_its_code() {
    let s = Setup::new(1).await;
    let id = s.publish(0, "x").await;
    let log = Arc::new(Log::default());
    let c = start_consumer(
        &s,
        consumer_options("worker", SECRET),
        TestHandler::ok("worker", log.clone()),
    )
    .await;
    // Garbage where the Auth belongs: docs/protocol.md, "Errors": a frame it cannot decode → its code.
    let mut ws = connect(&c.url).await;
    let _ = raw_hello(&mut ws, handshake::new_nonce(), "raw").await;
    send(&mut ws, vec![0x01, 0x99, 0, 0, 0, 0]).await;
    expect_refused(
        &mut ws,
        frame::ERR_UNKNOWN_COMMAND,
        "garbage instead of auth",
    )
    .await;
    // A Deliver where the Auth belongs: "a consumer accepts no Deliver before it verified proof_d (one
    // that comes earlier is a protocol violation, code 5)".
    let mut ws = connect(&c.url).await;
    let _ = raw_hello(&mut ws, handshake::new_nonce(), "raw").await;
    let deliver = Frame::Deliver(Delivery {
        partition: 0,
        epoch: 1,
        attempt: 1,
        id,
        body: b"x",
    });
    send(&mut ws, enc(&[deliver])).await;
    expect_refused(
        &mut ws,
        frame::ERR_PROTOCOL_VIOLATION,
        "deliver instead of auth",
    )
    .await;
    assert_eq!(log.total_runs(), 0);
    c.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_dispatcher_that_proves_the_secret_gets_credit_acks_and_is_held_to_its_credit() {
    let s = Setup::new(2).await;
    let p = 1;
    let ids = [s.publish(p, "first").await, s.publish(p, "second").await];
    let log = Arc::new(Log::default());
    let mut opts: ConsumerOptions = consumer_options("worker", SECRET);
    opts.window = 3;
    let c = start_consumer(&s, opts, TestHandler::ok("worker", log.clone())).await;

    let mut ws = connect(&c.url).await;
    let nonce_d = handshake::new_nonce();
    let (nonce_c, cid, proof_c) = raw_hello(&mut ws, nonce_d, "raw-d").await;
    assert!(
        handshake::verify(
            SECRET,
            Role::Consumer,
            &nonce_d,
            &nonce_c,
            "raw-d",
            &cid,
            &proof_c
        ),
        "the consumer's proof follows docs/protocol.md"
    );
    let proof = handshake::proof(SECRET, Role::Dispatcher, &nonce_d, &nonce_c, "raw-d", &cid);
    send(&mut ws, enc(&[Frame::Auth { proof }])).await;
    assert_eq!(
        recv(&mut ws, READ_TIMEOUT).await,
        Some(vec![Got::Credit(3)]),
        "after the auth the consumer grants its window"
    );
    // A Ping is answered with a Pong carrying its token.
    send(
        &mut ws,
        enc(&[Frame::Ping {
            token: 0x0102_0304_0506_0708,
        }]),
    )
    .await;
    let pong = tokio::time::timeout(READ_TIMEOUT, ws.next())
        .await
        .expect("a pong in time")
        .expect("a message")
        .expect("no error");
    assert_eq!(
        decode_all(&pong.into_data()),
        vec![Got::Pong(0x0102_0304_0506_0708)]
    );

    let deliver = |id: MessageId, attempt: u16, body: &'static [u8]| {
        Frame::Deliver(Delivery {
            partition: p,
            epoch: 7,
            attempt,
            id,
            body,
        })
    };
    send(&mut ws, enc(&[deliver(ids[0], 1, b"first")])).await;
    assert_eq!(
        recv(&mut ws, READ_TIMEOUT).await,
        Some(vec![
            Got::Ack {
                p,
                epoch: 7,
                id: ids[0]
            },
            Got::Credit(1)
        ]),
        "the ack names partition, epoch and id, and returns the credit"
    );
    assert_eq!(
        s.store.result(p, ids[0]).await.expect("result"),
        Some(format!("ok {}", ids[0]).into_bytes())
    );
    // The same message again (a redelivery): acknowledged, not run again.
    send(&mut ws, enc(&[deliver(ids[0], 2, b"first")])).await;
    assert_eq!(
        recv(&mut ws, READ_TIMEOUT).await,
        Some(vec![
            Got::Ack {
                p,
                epoch: 7,
                id: ids[0]
            },
            Got::Credit(1)
        ])
    );
    assert_eq!(log.runs_of(p, ids[0]).len(), 1, "a done message ran again");

    // Four deliveries against a window of three: a protocol violation, none of them runs.
    let over: Vec<Frame<'_>> = (0..4).map(|_| deliver(ids[1], 1, b"second")).collect();
    send(&mut ws, enc(&over)).await;
    expect_refused(
        &mut ws,
        frame::ERR_PROTOCOL_VIOLATION,
        "deliveries beyond the credit",
    )
    .await;
    assert!(
        log.runs_of(p, ids[1]).is_empty(),
        "a delivery beyond the credit ran"
    );
    c.stop().await;
}

/// A raw consumer: accepts one connection from the leader and answers its hello with `secret`.
async fn raw_consumer_accept(
    listener: &TcpListener,
) -> (WebSocketStream<TcpStream>, [u8; 16], String) {
    let (sock, _) = tokio::time::timeout(READ_TIMEOUT, listener.accept())
        .await
        .expect("the leader dials within the timeout")
        .expect("accept");
    let mut ws = tokio_tungstenite::accept_async(sock)
        .await
        .expect("WebSocket upgrade");
    let first = tokio::time::timeout(READ_TIMEOUT, ws.next())
        .await
        .expect("the leader's hello")
        .expect("a message")
        .expect("no error");
    let got = decode_all(&first.into_data());
    match got.as_slice() {
        [Got::Hello { nonce, id }] => (ws, *nonce, id.clone()),
        other => panic!("the leader opens with one Hello, got {other:?}"),
    }
}

/// The frames of the next binary message from the leader (pings skipped); `None` when it hung up.
async fn recv_server(ws: &mut WebSocketStream<TcpStream>, within: Duration) -> Option<Vec<Got>> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let msg = match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(m) => m,
            Err(_) => return Some(Vec::new()),
        };
        match msg {
            None | Some(Err(_)) | Some(Ok(WsMessage::Close(_))) => return None,
            Some(Ok(WsMessage::Binary(b))) => {
                let got: Vec<Got> = decode_all(&b)
                    .into_iter()
                    .filter(|g| !matches!(g, Got::Ping(_) | Got::Pong(_)))
                    .collect();
                if !got.is_empty() {
                    return Some(got);
                }
            }
            Some(Ok(_)) => {}
        }
    }
}

async fn send_server(ws: &mut WebSocketStream<TcpStream>, bytes: Vec<u8>) {
    ws.send(WsMessage::Binary(bytes.into()))
        .await
        .expect("send to the leader");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_refuses_a_consumer_whose_proof_fails_even_when_it_grants_credit() {
    let s = Setup::new(1).await;
    let ids = publish_some(&s, 5).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let leader = start_leader(&s, leader_options("leader-x", vec![url], SECRET)).await;

    for case in ["wrong secret", "dispatcher's label"] {
        let (mut ws, nonce_d, did) = raw_consumer_accept(&listener).await;
        assert_eq!(did, "leader-x", "the leader's hello carries its node id");
        let nonce_c = handshake::new_nonce();
        let proof = match case {
            "wrong secret" => handshake::proof(
                WRONG_SECRET,
                Role::Consumer,
                &nonce_d,
                &nonce_c,
                &did,
                "fake",
            ),
            // The right secret under the other side's label: must not verify as a consumer's proof.
            _ => handshake::proof(SECRET, Role::Dispatcher, &nonce_d, &nonce_c, &did, "fake"),
        };
        send_server(
            &mut ws,
            enc(&[
                Frame::Hello {
                    nonce: nonce_c,
                    peer_id: "fake",
                },
                Frame::Auth { proof },
            ]),
        )
        .await;
        // Credit right away, as a consumer that skips checking the leader would.
        send_server(&mut ws, enc(&[Frame::Credit { n: 100 }])).await;
        let got = recv_server(&mut ws, READ_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("{case}: the leader hung up without an Error"));
        assert_eq!(
            got,
            vec![
                Got::Error(frame::ERR_AUTH_FAILED, "auth failed".into()),
                Got::Close(frame::ERR_AUTH_FAILED)
            ],
            "{case}: the leader refuses with Error{{4}} + Close{{4}} (and no Auth, no Deliver)"
        );
        if let Some(more) = recv_server(&mut ws, READ_TIMEOUT).await {
            assert!(
                more.is_empty(),
                "{case}: after refusing, the leader sent {more:?}"
            );
        }
    }
    assert_unread(&s).await;
    assert_eq!(s.done_count(&ids).await, 0);
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_proves_itself_to_a_raw_consumer_and_delivers_within_credit() {
    let s = Setup::new(1).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let first = s.publish(0, "one").await;
    let leader = start_leader(&s, leader_options("leader-y", vec![url], SECRET)).await;

    let (mut ws, nonce_d, did) = raw_consumer_accept(&listener).await;
    let nonce_c = handshake::new_nonce();
    let proof_c = handshake::proof(SECRET, Role::Consumer, &nonce_d, &nonce_c, &did, "raw-c");
    send_server(
        &mut ws,
        enc(&[
            Frame::Hello {
                nonce: nonce_c,
                peer_id: "raw-c",
            },
            Frame::Auth { proof: proof_c },
        ]),
    )
    .await;
    let got = recv_server(&mut ws, READ_TIMEOUT)
        .await
        .expect("the leader's auth");
    let [Got::Auth(proof_d)] = got.as_slice() else {
        panic!("the leader answers a good proof with its own Auth, got {got:?}");
    };
    assert!(
        handshake::verify(
            SECRET,
            Role::Dispatcher,
            &nonce_d,
            &nonce_c,
            &did,
            "raw-c",
            proof_d
        ),
        "the leader's proof follows docs/protocol.md"
    );
    // A Ping is answered with a Pong carrying its token.
    send_server(&mut ws, enc(&[Frame::Ping { token: 77 }])).await;
    loop {
        let msg = tokio::time::timeout(READ_TIMEOUT, ws.next())
            .await
            .expect("a pong in time")
            .expect("a message")
            .expect("no error");
        // The leader pings on its own too; anything else before the Pong is wrong.
        let got: Vec<Got> = decode_all(&msg.into_data())
            .into_iter()
            .filter(|g| !matches!(g, Got::Ping(_)))
            .collect();
        if !got.is_empty() {
            assert_eq!(got, vec![Got::Pong(77)]);
            break;
        }
    }
    // No Deliver before the first Credit.
    assert_eq!(
        recv_server(&mut ws, Duration::from_millis(1500)).await,
        Some(Vec::new()),
        "the leader sent something before any credit"
    );
    wait_all_held(&s).await;
    let (_, epoch) = s.store.holder(0).await.expect("holder").expect("held");

    send_server(&mut ws, enc(&[Frame::Credit { n: 1 }])).await;
    let got = recv_server(&mut ws, READ_TIMEOUT)
        .await
        .expect("a delivery");
    assert_eq!(
        got,
        vec![Got::Deliver {
            p: 0,
            epoch,
            attempt: 1,
            id: first,
            body: b"one".to_vec()
        }],
        "one credit, one Deliver under the lease's epoch"
    );
    // More messages, but no credit left: nothing more comes.
    let second = s.publish(0, "two").await;
    let _third = s.publish(0, "three").await;
    assert_eq!(
        recv_server(&mut ws, Duration::from_millis(1500)).await,
        Some(Vec::new()),
        "a Deliver beyond the credit"
    );
    assert_eq!(
        s.pending(0).await,
        1,
        "only the delivered message is pending"
    );
    // Ack + Credit 1: the ack is written, the next message comes.
    send_server(
        &mut ws,
        enc(&[
            Frame::Ack {
                partition: 0,
                epoch,
                id: first,
            },
            Frame::Credit { n: 1 },
        ]),
    )
    .await;
    let got = recv_server(&mut ws, READ_TIMEOUT)
        .await
        .expect("a delivery");
    assert!(
        matches!(got.as_slice(), [Got::Deliver { id, attempt: 1, .. }] if *id == second),
        "{got:?}"
    );
    // An ack with another epoch is ignored: the message stays pending.
    send_server(
        &mut ws,
        enc(&[Frame::Ack {
            partition: 0,
            epoch: epoch + 1,
            id: second,
        }]),
    )
    .await;
    wait_until(DEADLINE, "the first message is acknowledged", || async {
        s.pending(0).await == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut conn = s.conn.clone();
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(s.keys.stream_key(0))
        .arg(crate::support::GROUP)
        .arg("-")
        .arg("+")
        .arg(10)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    assert_eq!(pending.len(), 1, "an ack with a wrong epoch was applied");
    let row: (String, String, i64, i64) =
        redis::from_redis_value_ref(&pending[0]).expect("XPENDING row");
    assert_eq!(row.0, second.to_string());
    drop(ws);
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_answers_a_bad_frame_from_a_consumer_with_an_error_and_hangs_up() {
    let s = Setup::new(1).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("ws://{}/", listener.local_addr().expect("addr"));
    let leader = start_leader(&s, leader_options("leader-z", vec![url], SECRET)).await;
    let cases: [(&str, Vec<u8>, u16); 3] = [
        (
            "unknown command",
            vec![0x01, 0x99, 0, 0, 0, 0],
            frame::ERR_UNKNOWN_COMMAND,
        ),
        (
            "bad version",
            vec![0x07, 0x13, 0, 0, 0, 4, 0, 0, 0, 1],
            frame::ERR_UNSUPPORTED_VERSION,
        ),
        (
            "a Deliver from a consumer",
            enc(&[Frame::Deliver(Delivery {
                partition: 0,
                epoch: 1,
                attempt: 1,
                id: MessageId::new(1, 1),
                body: b"",
            })]),
            frame::ERR_PROTOCOL_VIOLATION,
        ),
    ];
    for (case, bytes, code) in cases {
        let (mut ws, nonce_d, did) = raw_consumer_accept(&listener).await;
        let nonce_c = handshake::new_nonce();
        let proof_c = handshake::proof(SECRET, Role::Consumer, &nonce_d, &nonce_c, &did, "raw-c");
        send_server(
            &mut ws,
            enc(&[
                Frame::Hello {
                    nonce: nonce_c,
                    peer_id: "raw-c",
                },
                Frame::Auth { proof: proof_c },
            ]),
        )
        .await;
        let got = recv_server(&mut ws, READ_TIMEOUT)
            .await
            .expect("the leader's auth");
        assert!(matches!(got.as_slice(), [Got::Auth(_)]), "{got:?}");
        send_server(&mut ws, bytes).await;
        let got = recv_server(&mut ws, READ_TIMEOUT).await;
        assert!(
            matches!(got.as_deref(), Some([Got::Error(c, _), Got::Close(c2)]) if *c == code && *c2 == code),
            "{case}: expected Error{{{code}}} + Close{{{code}}}, got {got:?}"
        );
    }
    leader.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_delivery_of_a_message_arriving_while_the_first_is_being_claimed_does_not_run_it_again()
 {
    let s = Setup::new(1).await;
    let log = Arc::new(Log::default());
    let slow: crate::support::Behaviour = Arc::new(|m, _| crate::support::Step {
        sleep: Duration::from_millis(300),
        outcome: dispatcher_delivery::consumer::Outcome::Done(format!("ok {}", m.id).into_bytes()),
    });
    let c = start_consumer(
        &s,
        consumer_options("worker", SECRET),
        TestHandler::new("worker", log.clone(), slow),
    )
    .await;
    let mut ws = connect(&c.url).await;
    let nonce_d = handshake::new_nonce();
    let (nonce_c, cid, _) = raw_hello(&mut ws, nonce_d, "raw-d").await;
    let proof = handshake::proof(SECRET, Role::Dispatcher, &nonce_d, &nonce_c, "raw-d", &cid);
    send(&mut ws, enc(&[Frame::Auth { proof }])).await;
    assert!(matches!(
        recv(&mut ws, READ_TIMEOUT).await.as_deref(),
        Some([Got::Credit(_)])
    ));
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(s.publish(0, &format!("m{i}")).await);
    }
    // Each message twice, in two WebSocket messages right after each other (a redelivery that
    // overtakes the first delivery's claim: a lost ack, an ack timeout shorter than a claim's round
    // trip).
    for id in &ids {
        for attempt in [1, 2] {
            send(
                &mut ws,
                enc(&[Frame::Deliver(Delivery {
                    partition: 0,
                    epoch: 1,
                    attempt,
                    id: *id,
                    body: b"m",
                })]),
            )
            .await;
        }
    }
    wait_until(DEADLINE, "every message has a result", || async {
        s.done_count(&ids.iter().map(|id| (0, *id)).collect::<Vec<_>>())
            .await
            == ids.len()
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        log.ran_twice(),
        vec![],
        "a duplicate delivery ran the handler again"
    );
    c.stop().await;
}

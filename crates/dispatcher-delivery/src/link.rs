//! One dialled consumer: the dispatcher side of a WebSocket link. Dials, proves and checks the shared
//! secret (hello/auth), then carries deliveries out and acks, nacks and credit in; redials with backoff
//! when the link drops. Partitions talk to links only through [`LinkHandle`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use dispatcher_wire::frame::{self, Frame, MessageId};
use dispatcher_wire::handshake::{self, Role};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{Notify, mpsc, watch};
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::error::{DeliveryError, Result};
use crate::guard::{self, Budget, Budgeted};
use crate::telemetry;

/// What a link tells the partition that owns a message.
#[derive(Debug)]
pub enum PartitionEvent {
    /// Acknowledged ids, with the epoch the consumer saw on their delivery.
    Acked { epoch: u64, ids: Vec<MessageId> },
    /// A negative acknowledgement: `reject` sends it to the dead letters at once.
    Nacked {
        epoch: u64,
        id: MessageId,
        reject: bool,
        reason: String,
    },
    /// Link `link` (connection generation `generation`) dropped: what it held goes elsewhere.
    LinkDown { link: usize, generation: u64 },
}

/// Partition → channel of its events; links route acks by the partition number in the frame.
pub type Routes = Arc<RwLock<HashMap<u16, mpsc::UnboundedSender<PartitionEvent>>>>;

/// The shared face of one consumer link.
#[derive(Debug)]
pub struct LinkHandle {
    pub index: usize,
    pub url: String,
    credit: AtomicI64,
    generation: AtomicU64,
    up: AtomicBool,
    tx: Mutex<Option<(u64, mpsc::UnboundedSender<Vec<u8>>)>>,
    consumer_id: Mutex<String>,
}

impl LinkHandle {
    pub fn new(index: usize, url: String) -> Self {
        LinkHandle {
            index,
            url,
            credit: AtomicI64::new(0),
            generation: AtomicU64::new(0),
            up: AtomicBool::new(false),
            tx: Mutex::new(None),
            consumer_id: Mutex::new(String::new()),
        }
    }

    /// Whether the link is connected and authenticated.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// Credit left.
    pub fn credit(&self) -> i64 {
        self.credit.load(Ordering::Acquire)
    }

    /// The consumer's id from its hello.
    pub fn consumer_id(&self) -> String {
        self.consumer_id
            .lock()
            .map(|g| g.clone())
            .unwrap_or_default()
    }

    /// Takes up to `want` credits; returns how many were taken and the connection generation they
    /// belong to.
    pub fn take_credit(&self, want: i64) -> Option<(i64, u64)> {
        if want <= 0 {
            return None;
        }
        let mut cur = self.credit.load(Ordering::Acquire);
        loop {
            if cur <= 0 {
                return None;
            }
            let n = cur.min(want);
            match self.credit.compare_exchange_weak(
                cur,
                cur - n,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Some((n, self.generation.load(Ordering::Acquire))),
                Err(actual) => cur = actual,
            }
        }
    }

    /// Gives back credit taken but not used.
    pub fn return_credit(&self, n: i64, generation: u64) {
        if n > 0 && self.generation.load(Ordering::Acquire) == generation && self.is_up() {
            self.credit.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Queues one WebSocket message on connection `generation`; false when that connection is gone.
    pub fn send(&self, generation: u64, bytes: Vec<u8>) -> bool {
        match self.tx.lock() {
            Ok(g) => match &*g {
                Some((gen_, tx)) if *gen_ == generation => tx.send(bytes).is_ok(),
                _ => false,
            },
            Err(_) => false,
        }
    }
}

/// What a link needs to run.
#[derive(Debug, Clone)]
pub struct LinkContext {
    pub node_id: String,
    pub secret: Arc<Vec<u8>>,
    pub routes: Routes,
    /// Woken whenever some link gains credit.
    pub credit: Arc<Notify>,
    pub max_payload: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
}

fn broadcast(routes: &Routes, link: usize, generation: u64) {
    if let Ok(r) = routes.read() {
        for tx in r.values() {
            let _ = tx.send(PartitionEvent::LinkDown { link, generation });
        }
    }
}

/// Keeps the link to one consumer up until `shutdown`: dial, hello/auth, serve, redial with backoff.
pub async fn run(handle: Arc<LinkHandle>, ctx: LinkContext, mut shutdown: watch::Receiver<bool>) {
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let outcome = tokio::select! {
            r = connect_and_serve(&handle, &ctx) => r,
            _ = shutdown.changed() => Ok(()),
        };
        // The connection is over: nothing more goes to it, and what it held goes elsewhere.
        let generation = handle.generation.load(Ordering::Acquire);
        let was_up = handle.up.swap(false, Ordering::AcqRel);
        handle.credit.store(0, Ordering::Release);
        if let Ok(mut g) = handle.tx.lock() {
            *g = None;
        }
        if was_up {
            metrics::gauge!(telemetry::LINKS_UP).decrement(1.0);
            broadcast(&ctx.routes, handle.index, generation);
            failures = 0;
        }
        match outcome {
            Ok(()) if *shutdown.borrow() => return,
            Ok(()) => tracing::info!(url = %handle.url, "consumer link closed"),
            Err(e) => {
                if matches!(e, DeliveryError::Protocol(_)) {
                    tracing::warn!(url = %handle.url, error = %e, "consumer link refused");
                } else {
                    tracing::debug!(url = %handle.url, error = %e, "consumer link down");
                }
            }
        }
        failures = failures.saturating_add(1);
        let exp = failures.saturating_sub(1).min(16);
        let full = ctx
            .backoff_base
            .saturating_mul(1u32 << exp)
            .min(ctx.backoff_max);
        let wait = full / 2 + full.mul_f64(rand::random::<f64>() / 2.0);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Dials `url` (`ws://host[:port]/…`): TCP, then the WebSocket upgrade over a socket that reads at most
/// [`guard::PRE_AUTH_BYTES`] until the consumer has proved the secret (`budget`).
async fn dial(
    url: &str,
    max_payload: u32,
    budget: Budget,
) -> Result<tokio_tungstenite::WebSocketStream<Budgeted<tokio::net::TcpStream>>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let request = url
        .into_client_request()
        .map_err(|e| DeliveryError::invalid(format!("consumer URL: {e}")))?;
    let host = request
        .uri()
        .host()
        .ok_or_else(|| DeliveryError::invalid("consumer URL without a host"))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = request.uri().port_u16().unwrap_or(80);
    let sock = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    let _ = sock.set_nodelay(true);
    let (ws, _) = tokio_tungstenite::client_async_with_config(
        request,
        Budgeted::new(sock, budget),
        Some(guard::ws_config(max_payload)),
    )
    .await?;
    Ok(ws)
}

async fn connect_and_serve(handle: &Arc<LinkHandle>, ctx: &LinkContext) -> Result<()> {
    let budget = Budget::pre_auth();
    let mut ws = tokio::time::timeout(
        Duration::from_secs(3),
        dial(handle.url.as_str(), ctx.max_payload, budget.clone()),
    )
    .await
    .map_err(|_| DeliveryError::Io(std::io::Error::other("dial timed out")))??;

    // Hello: our nonce and id; the consumer answers with its own and its proof.
    let nonce_d = handshake::new_nonce();
    let mut out = Vec::with_capacity(64);
    frame::encode(
        &Frame::Hello {
            nonce: nonce_d,
            peer_id: &ctx.node_id,
        },
        &mut out,
    )
    .map_err(|e| DeliveryError::invalid(format!("node id: {e}")))?;
    ws.send(WsMessage::Binary(out.into())).await?;

    let reply = tokio::time::timeout(Duration::from_secs(3), next_binary(&mut ws))
        .await
        .map_err(|_| DeliveryError::protocol("no hello from the consumer within 3 s"))??;
    let mut nonce_c = None;
    let mut consumer_id = String::new();
    let mut proof_c = None;
    for f in frame::frames(&reply, ctx.max_payload) {
        let f = match f {
            Ok(f) => f,
            Err(e) => {
                let _ = ws
                    .send(WsMessage::Binary(refusal(e.code(), &e.to_string()).into()))
                    .await;
                return Err(DeliveryError::protocol(format!("consumer hello: {e}")));
            }
        };
        match f {
            Frame::Hello { nonce, peer_id } => {
                nonce_c = Some(nonce);
                consumer_id = peer_id.to_owned();
            }
            Frame::Auth { proof } => proof_c = Some(proof),
            Frame::Error { code, message } => {
                return Err(DeliveryError::protocol(format!(
                    "consumer refused the hello: error {code}: {message}"
                )));
            }
            other => {
                let why = format!("unexpected {:?} during hello", other.command());
                let _ = ws
                    .send(WsMessage::Binary(
                        refusal(frame::ERR_PROTOCOL_VIOLATION, &why).into(),
                    ))
                    .await;
                return Err(DeliveryError::protocol(why));
            }
        }
    }
    let (Some(nonce_c), Some(proof_c)) = (nonce_c, proof_c) else {
        return Err(DeliveryError::protocol(
            "consumer hello without nonce or proof",
        ));
    };
    if !handshake::verify(
        &ctx.secret,
        Role::Consumer,
        &nonce_d,
        &nonce_c,
        &ctx.node_id,
        &consumer_id,
        &proof_c,
    ) {
        metrics::counter!(telemetry::HANDSHAKES_REFUSED).increment(1);
        let mut out = Vec::new();
        let _ = frame::encode(
            &Frame::Error {
                code: frame::ERR_AUTH_FAILED,
                message: "auth failed",
            },
            &mut out,
        );
        let _ = frame::encode(
            &Frame::Close {
                code: frame::ERR_AUTH_FAILED,
                reason: "auth failed",
            },
            &mut out,
        );
        let _ = ws.send(WsMessage::Binary(out.into())).await;
        let _ = ws.close(None).await;
        return Err(DeliveryError::protocol(format!(
            "consumer {consumer_id:?} failed the hello: wrong proof"
        )));
    }
    // The consumer proved the secret: its messages are limited by the WebSocket settings from here on.
    budget.lift();
    let proof_d = handshake::proof(
        &ctx.secret,
        Role::Dispatcher,
        &nonce_d,
        &nonce_c,
        &ctx.node_id,
        &consumer_id,
    );
    let mut out = Vec::with_capacity(64);
    let _ = frame::encode(&Frame::Auth { proof: proof_d }, &mut out);
    ws.send(WsMessage::Binary(out.into())).await?;

    // Authenticated on our side. The consumer sends credit once it has checked our proof.
    let generation = handle.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
    if let Ok(mut g) = handle.tx.lock() {
        *g = Some((generation, tx));
    }
    if let Ok(mut g) = handle.consumer_id.lock() {
        *g = consumer_id.clone();
    }
    handle.credit.store(0, Ordering::Release);
    handle.up.store(true, Ordering::Release);
    metrics::gauge!(telemetry::LINKS_UP).increment(1.0);
    tracing::info!(url = %handle.url, consumer = %consumer_id, "consumer link up");

    let (mut sink, mut stream) = ws.split();
    let mut ping = tokio::time::interval(Duration::from_secs(5));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = tokio::time::Instant::now();
    let mut acks: HashMap<(u16, u64), Vec<MessageId>> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            msg = stream.next() => {
                let Some(msg) = msg else { return Ok(()) };
                let data = match msg? {
                    WsMessage::Binary(b) => b,
                    WsMessage::Close(_) => return Ok(()),
                    WsMessage::Text(_) => {
                        let why = "text message on a binary protocol";
                        let _ = sink.send(WsMessage::Binary(refusal(frame::ERR_BAD_FRAME, why).into())).await;
                        return Err(DeliveryError::protocol(why));
                    }
                    _ => continue,
                };
                last_heard = tokio::time::Instant::now();
                let mut pong = None;
                for f in frame::frames(&data, ctx.max_payload) {
                    let f = match f {
                        Ok(f) => f,
                        Err(e) => {
                            let _ = sink.send(WsMessage::Binary(refusal(e.code(), &e.to_string()).into())).await;
                            return Err(DeliveryError::protocol(format!("from consumer: {e}")));
                        }
                    };
                    match f {
                        Frame::Ack { partition, epoch, id } => acks.entry((partition, epoch)).or_default().push(id),
                        Frame::Nack { partition, epoch, id, reject, reason } => {
                            route(&ctx.routes, partition, PartitionEvent::Nacked { epoch, id, reject, reason: reason.to_owned() });
                        }
                        Frame::Credit { n } => {
                            handle.credit.fetch_add(i64::from(n), Ordering::AcqRel);
                            ctx.credit.notify_waiters();
                        }
                        Frame::Ping { token } => pong = Some(token),
                        Frame::Pong { .. } => {}
                        Frame::Close { .. } => return Ok(()),
                        Frame::Error { code, message } => {
                            return Err(DeliveryError::protocol(format!("consumer error {code}: {message}")));
                        }
                        other => {
                            let why = format!("unexpected {:?} from a consumer", other.command());
                            let _ = sink.send(WsMessage::Binary(refusal(frame::ERR_PROTOCOL_VIOLATION, &why).into())).await;
                            return Err(DeliveryError::protocol(why));
                        }
                    }
                }
                for ((partition, epoch), ids) in acks.drain() {
                    route(&ctx.routes, partition, PartitionEvent::Acked { epoch, ids });
                }
                if let Some(token) = pong {
                    let mut out = Vec::new();
                    let _ = frame::encode(&Frame::Pong { token }, &mut out);
                    sink.send(WsMessage::Binary(out.into())).await?;
                }
            }
            out = rx.recv() => {
                let Some(mut out) = out else { return Ok(()) };
                // Coalesce whatever else is queued into the same WebSocket message.
                while out.len() < 256 * 1024 {
                    match rx.try_recv() {
                        Ok(more) => out.extend_from_slice(&more),
                        Err(_) => break,
                    }
                }
                if out.len() <= guard::MAX_MESSAGE_BYTES {
                    sink.send(WsMessage::Binary(out.into())).await?;
                } else {
                    // Within the consumer's message limit: whole frames, several messages.
                    for run in guard::split_messages(&out) {
                        sink.send(WsMessage::Binary(run.to_vec().into())).await?;
                    }
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > Duration::from_secs(15) {
                    return Err(DeliveryError::protocol("consumer silent for 15 s"));
                }
                let mut out = Vec::new();
                let _ = frame::encode(&Frame::Ping { token: rand::random() }, &mut out);
                sink.send(WsMessage::Binary(out.into())).await?;
            }
        }
    }
}

/// An `Error` frame and the `Close` that follows it (docs/protocol.md: after an error, close and hang up).
pub(crate) fn refusal(code: u16, why: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = frame::encode(&Frame::Error { code, message: why }, &mut out);
    let _ = frame::encode(&Frame::Close { code, reason: why }, &mut out);
    out
}

fn route(routes: &Routes, partition: u16, event: PartitionEvent) {
    if let Ok(r) = routes.read()
        && let Some(tx) = r.get(&partition)
    {
        let _ = tx.send(event);
    }
    // No route: the partition is no longer ours. The message stays pending; its next owner redelivers
    // it and the consumer finds it done.
}

/// The next binary message, skipping WebSocket pings and pongs.
pub(crate) async fn next_binary<S>(ws: &mut S) -> Result<bytes::Bytes>
where
    S: futures_util::Stream<
            Item = std::result::Result<WsMessage, tokio_tungstenite::tungstenite::Error>,
        > + Unpin,
{
    loop {
        match ws.next().await {
            Some(Ok(WsMessage::Binary(b))) => return Ok(b),
            Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => continue,
            Some(Ok(WsMessage::Text(_))) => {
                return Err(DeliveryError::protocol("text message on a binary protocol"));
            }
            Some(Ok(WsMessage::Close(_))) | None => {
                return Err(DeliveryError::protocol("closed during hello"));
            }
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

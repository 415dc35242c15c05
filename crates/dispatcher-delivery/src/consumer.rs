//! The consumer library: listen for dispatchers, check their proof of the shared secret (and prove ours),
//! take deliveries within the credit we grant, and for each message claim it, run the handler, record its
//! result and completion in one atomic step in Redis, then acknowledge. A message delivered again (after
//! a leader failover, a lost ack) is found done and acknowledged without running the handler again.
//!
//! A service implements [`Handler`] and calls [`serve`] with the same stream, partition count, key
//! prefix and shared secret as its dispatchers (`docs/delivery.md`):
//!
//! ```no_run
//! use std::sync::Arc;
//!
//! use dispatcher_delivery::consumer::{self, ConsumerOptions, Handler, Message, Outcome};
//! use dispatcher_delivery::keys::Partitioning;
//! use dispatcher_delivery::store::{self, Store};
//!
//! /// Charges an order; the charge id is the result recorded with the message's completion.
//! struct Billing;
//!
//! impl Handler for Billing {
//!     async fn handle(&self, msg: Message) -> Outcome {
//!         let Ok(order) = std::str::from_utf8(&msg.body) else {
//!             // Can never succeed: straight to the dead letters, with this reason.
//!             return Outcome::Reject("the body is not UTF-8".into());
//!         };
//!         if order.is_empty() {
//!             // Failed for now: delivered again (to another consumer if there is one).
//!             return Outcome::Retry("empty order".into());
//!         }
//!         Outcome::Done(format!("charge for {order} at attempt {}", msg.attempt).into_bytes())
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> dispatcher_delivery::Result<()> {
//!     // As the dispatchers have it: DISPATCHER_DELIVERY_STREAM, _PARTITIONS, DISPATCHER_KEY_PREFIX + ":".
//!     let keys = Partitioning::new("dsp:jobs", 12, "dsp:")?;
//!     let store = Store::new(store::connect("redis://127.0.0.1:6379").await?, keys, "dispatcher").await?;
//!     let secret = std::env::var("DISPATCHER_SHARED_SECRET").unwrap_or_default().into_bytes();
//!     let mut opts = ConsumerOptions::new("billing-1", secret);
//!     opts.window = 256; // deliveries outstanding per dispatcher link
//!     let listener = tokio::net::TcpListener::bind("0.0.0.0:7070").await?;
//!     let (stop, shutdown) = tokio::sync::watch::channel(false);
//!     tokio::spawn(async move {
//!         let _ = tokio::signal::ctrl_c().await;
//!         // Handlers already running finish and record their results; then the links close.
//!         let _ = stop.send(true);
//!     });
//!     consumer::serve(listener, store, opts, Arc::new(Billing), shutdown).await
//! }
//! ```

use std::collections::HashSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dispatcher_wire::frame::{self, Frame, MessageId};
use dispatcher_wire::handshake::{self, Role};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::error::{DeliveryError, Result};
use crate::guard::{self, Budget, Budgeted};
use crate::store::{ClaimState, Store};
use crate::telemetry;

/// One delivered message, as a handler sees it.
#[derive(Debug, Clone)]
pub struct Message {
    pub partition: u16,
    pub epoch: u64,
    /// 1 for the first delivery.
    pub attempt: u16,
    pub id: MessageId,
    pub body: bytes::Bytes,
}

impl Message {
    /// Appends this message's Ack frame to `out`.
    fn ack(&self, out: &mut Vec<u8>) {
        let _ = frame::encode(
            &Frame::Ack {
                partition: self.partition,
                epoch: self.epoch,
                id: self.id,
            },
            out,
        );
    }
}

/// What a handler made of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: this result is recorded with the message's completion.
    Done(Vec<u8>),
    /// Failed for now: deliver it again (possibly to another consumer).
    Retry(String),
    /// Can never succeed: straight to the dead letters.
    Reject(String),
}

/// Application code run for each message.
pub trait Handler: Send + Sync + 'static {
    /// Processes one message.
    fn handle(&self, msg: Message) -> impl Future<Output = Outcome> + Send;

    /// Told once per batch, before the handler runs for these messages (claimed for us). For audits
    /// and tests; default: nothing.
    fn running(&self, _ids: &[(u16, MessageId)]) {}

    /// Told once per batch after completion: per message, `true` when this consumer's call recorded the
    /// result, `false` when it was done already (its handler did not run here, or ran twice). For audits
    /// and tests; default: nothing.
    fn recorded(&self, _results: &[(u16, MessageId, bool)]) {}
}

/// How a consumer runs.
#[derive(Debug, Clone)]
pub struct ConsumerOptions {
    /// This consumer's id in the hello.
    pub consumer_id: String,
    pub secret: Vec<u8>,
    /// Credit granted to each dispatcher connection: deliveries it may have outstanding here.
    pub window: u32,
    /// How long a claim protects a message from a second handler run elsewhere.
    pub claim_ttl: Duration,
    /// How long results (and so duplicate detection) are kept.
    pub retention: Duration,
    pub max_payload: u32,
    /// Connections that have not authenticated yet, at most; more are closed at once.
    pub max_handshakes: usize,
    /// How long a connection has for the WebSocket upgrade and the hello/auth exchange altogether.
    pub handshake_timeout: Duration,
}

impl ConsumerOptions {
    pub fn new(consumer_id: impl Into<String>, secret: Vec<u8>) -> Self {
        ConsumerOptions {
            consumer_id: consumer_id.into(),
            secret,
            window: 2048,
            claim_ttl: Duration::from_secs(10),
            retention: Duration::from_secs(24 * 3600),
            max_payload: frame::DEFAULT_MAX_PAYLOAD,
            max_handshakes: 64,
            handshake_timeout: Duration::from_secs(10),
        }
    }

    fn validate(&self) -> Result<()> {
        if self.consumer_id.is_empty()
            || self.consumer_id.len() > 200
            || self.consumer_id.contains('|')
        {
            return Err(DeliveryError::invalid(
                "consumer id: 1..=200 characters, no '|'",
            ));
        }
        if self.secret.len() < 16 {
            return Err(DeliveryError::invalid(
                "the shared secret must be at least 16 bytes",
            ));
        }
        if self.window == 0 {
            return Err(DeliveryError::invalid("window must be positive"));
        }
        if self.max_handshakes == 0 || self.max_handshakes > 100_000 {
            return Err(DeliveryError::invalid("max_handshakes must be 1 to 100000"));
        }
        if self.handshake_timeout < Duration::from_millis(100)
            || self.handshake_timeout > Duration::from_secs(300)
        {
            return Err(DeliveryError::invalid(
                "the handshake timeout must be from 100 ms to 300 s",
            ));
        }
        Ok(())
    }
}

struct Ctx<H> {
    store: Store,
    opts: ConsumerOptions,
    handler: Arc<H>,
    /// The claim owner: consumer id plus a per-process nonce, so a restarted consumer is not mistaken
    /// for the one that held the claim.
    owner: String,
    /// Messages (partition, id: stream ids repeat across partitions) whose handler runs here now.
    running: Mutex<HashSet<(u16, MessageId)>>,
}

impl<H> Ctx<H> {
    /// The set of messages running here (a poisoned lock still holds a consistent set: nothing panics
    /// while holding it).
    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<(u16, MessageId)>> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Accepts dispatcher connections on `listener` until `shutdown`; each is served on its own task.
pub async fn serve<H: Handler>(
    listener: TcpListener,
    store: Store,
    opts: ConsumerOptions,
    handler: Arc<H>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    opts.validate()?;
    let owner = format!("{}#{:08x}", opts.consumer_id, rand::random::<u32>());
    let ctx = Arc::new(Ctx {
        store,
        opts,
        handler,
        owner,
        running: Mutex::new(HashSet::new()),
    });
    let mut conns = JoinSet::new();
    let handshakes = Arc::new(tokio::sync::Semaphore::new(ctx.opts.max_handshakes));
    loop {
        tokio::select! {
            acc = listener.accept() => {
                let (sock, peer) = match acc {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    // Too many connections are still in their handshake: refuse (close) this one.
                    metrics::counter!(telemetry::HANDSHAKES_REFUSED).increment(1);
                    tracing::warn!(peer = %peer, max = ctx.opts.max_handshakes, "too many unauthenticated connections; closed one");
                    drop(sock);
                    continue;
                };
                let _ = sock.set_nodelay(true);
                let ctx = ctx.clone();
                let shutdown = shutdown.clone();
                conns.spawn(async move {
                    if let Err(e) = connection(sock, ctx, shutdown, permit).await {
                        tracing::info!(peer = %peer, error = %e, "dispatcher connection ended");
                    }
                });
            }
            _ = shutdown.changed() => break,
            Some(_) = conns.join_next() => {}
        }
    }
    while conns.join_next().await.is_some() {}
    Ok(())
}

use crate::link::refusal as refuse;

/// One dispatcher connection. Until the dispatcher has proved the secret it holds one of the
/// `max_handshakes` permits, has `handshake_timeout` for the upgrade and the hello/auth exchange, and
/// can make us read at most [`PRE_AUTH_BYTES`](crate::guard::PRE_AUTH_BYTES) (whatever message size it
/// announces); after, messages up to the protocol's maximum.
async fn connection<H: Handler>(
    sock: TcpStream,
    ctx: Arc<Ctx<H>>,
    mut shutdown: watch::Receiver<bool>,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Result<()> {
    let deadline = tokio::time::Instant::now() + ctx.opts.handshake_timeout;
    let late = || DeliveryError::protocol("no hello/auth within the handshake timeout");
    let budget = Budget::pre_auth();
    let max = ctx.opts.max_payload;
    let mut ws = tokio::time::timeout_at(
        deadline,
        tokio_tungstenite::accept_async_with_config(
            Budgeted::new(sock, budget.clone()),
            Some(guard::ws_config(max)),
        ),
    )
    .await
    .map_err(|_| late())??;

    // Hello from the dispatcher; ours with our proof; then its proof.
    let first = tokio::time::timeout_at(deadline, crate::link::next_binary(&mut ws))
        .await
        .map_err(|_| late())??;
    let mut hello = None;
    for f in frame::frames(&first, max) {
        match f {
            Ok(Frame::Hello { nonce, peer_id }) if hello.is_none() => {
                hello = Some((nonce, peer_id.to_owned()))
            }
            Ok(other) => {
                let _ = ws
                    .send(WsMessage::Binary(
                        refuse(frame::ERR_PROTOCOL_VIOLATION, "hello expected").into(),
                    ))
                    .await;
                return Err(DeliveryError::protocol(format!(
                    "{:?} before hello",
                    other.command()
                )));
            }
            Err(e) => {
                let _ = ws
                    .send(WsMessage::Binary(refuse(e.code(), &e.to_string()).into()))
                    .await;
                return Err(DeliveryError::protocol(format!("bad hello: {e}")));
            }
        }
    }
    let Some((nonce_d, dispatcher_id)) = hello else {
        return Err(DeliveryError::protocol("empty hello"));
    };
    let nonce_c = handshake::new_nonce();
    let proof_c = handshake::proof(
        &ctx.opts.secret,
        Role::Consumer,
        &nonce_d,
        &nonce_c,
        &dispatcher_id,
        &ctx.opts.consumer_id,
    );
    let mut out = Vec::new();
    frame::encode(
        &Frame::Hello {
            nonce: nonce_c,
            peer_id: &ctx.opts.consumer_id,
        },
        &mut out,
    )
    .map_err(|e| DeliveryError::invalid(format!("consumer id: {e}")))?;
    let _ = frame::encode(&Frame::Auth { proof: proof_c }, &mut out);
    ws.send(WsMessage::Binary(out.into())).await?;
    let second = tokio::time::timeout_at(deadline, crate::link::next_binary(&mut ws))
        .await
        .map_err(|_| late())??;
    let mut verified = false;
    for f in frame::frames(&second, max) {
        let refusal = match f {
            Ok(Frame::Auth { proof }) if !verified => {
                if handshake::verify(
                    &ctx.opts.secret,
                    Role::Dispatcher,
                    &nonce_d,
                    &nonce_c,
                    &dispatcher_id,
                    &ctx.opts.consumer_id,
                    &proof,
                ) {
                    verified = true;
                    continue;
                }
                metrics::counter!(telemetry::HANDSHAKES_REFUSED).increment(1);
                (
                    frame::ERR_AUTH_FAILED,
                    format!("dispatcher {dispatcher_id:?} failed the hello: wrong proof"),
                )
            }
            Ok(Frame::Error { code, message }) => {
                return Err(DeliveryError::protocol(format!(
                    "dispatcher refused us: {code}: {message}"
                )));
            }
            Ok(other) => (
                frame::ERR_PROTOCOL_VIOLATION,
                format!("{:?} in place of auth or before credit", other.command()),
            ),
            Err(e) => (e.code(), format!("bad auth frame: {e}")),
        };
        let (code, why) = refusal;
        let _ = ws.send(WsMessage::Binary(refuse(code, &why).into())).await;
        let _ = ws.close(None).await;
        return Err(DeliveryError::protocol(why));
    }
    if !verified {
        let why = "no auth in the dispatcher's second message";
        let _ = ws
            .send(WsMessage::Binary(
                refuse(frame::ERR_PROTOCOL_VIOLATION, why).into(),
            ))
            .await;
        return Err(DeliveryError::protocol(why));
    }
    tracing::info!(dispatcher = %dispatcher_id, "dispatcher authenticated");
    budget.lift();
    drop(permit);

    let (mut sink, mut stream) = ws.split();
    // Frames to send, and how many acks and nacks among them (each returns one credit).
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<(Vec<u8>, u64)>();
    let mut out = Vec::new();
    let _ = frame::encode(&Frame::Credit { n: ctx.opts.window }, &mut out);
    sink.send(WsMessage::Binary(out.into())).await?;
    let mut outstanding: u64 = 0;
    let window = u64::from(ctx.opts.window);
    let mut batches = JoinSet::new();
    // Liveness: the dispatcher pings every 5 s; silence for 15 s means it is gone.
    let mut last_heard = tokio::time::Instant::now();
    let mut liveness = tokio::time::interval(Duration::from_secs(1));
    let result = loop {
        tokio::select! {
            _ = liveness.tick() => {
                if last_heard.elapsed() > Duration::from_secs(15) {
                    break Err(DeliveryError::protocol("dispatcher silent for 15 s"));
                }
            }
            msg = stream.next() => {
                last_heard = tokio::time::Instant::now();
                let Some(msg) = msg else { break Ok(()) };
                let data = match msg {
                    Ok(WsMessage::Binary(b)) => b,
                    Ok(WsMessage::Close(_)) => break Ok(()),
                    Ok(WsMessage::Text(_)) => break Err(DeliveryError::protocol("text message on a binary protocol")),
                    Ok(_) => continue,
                    Err(e) => break Err(e.into()),
                };
                // Take every message already received too, so one claim and one completion call per
                // result hash cover them all (fewer, larger Redis calls under load).
                let mut datas = vec![data];
                let mut ended: Option<Result<()>> = None;
                while datas.len() < 64 {
                    match futures_util::FutureExt::now_or_never(stream.next()) {
                        Some(Some(Ok(WsMessage::Binary(b)))) => datas.push(b),
                        Some(Some(Ok(WsMessage::Close(_)))) | Some(None) => { ended = Some(Ok(())); break; }
                        Some(Some(Ok(WsMessage::Text(_)))) => {
                            ended = Some(Err(DeliveryError::protocol("text message on a binary protocol")));
                            break;
                        }
                        Some(Some(Ok(_))) => {}
                        Some(Some(Err(e))) => { ended = Some(Err(e.into())); break; }
                        None => break,
                    }
                }
                let mut batch = Vec::new();
                let mut reply = Vec::new();
                let mut bad = None;
                'frames: for data in &datas {
                    for f in frame::frames(data, max) {
                        match f {
                            Ok(Frame::Deliver(d)) => batch.push(Message {
                                partition: d.partition,
                                epoch: d.epoch,
                                attempt: d.attempt,
                                id: d.id,
                                body: data.slice_ref(d.body),
                            }),
                            Ok(Frame::Ping { token }) => { let _ = frame::encode(&Frame::Pong { token }, &mut reply); }
                            Ok(Frame::Pong { .. }) => {}
                            Ok(Frame::Close { .. }) => { bad = Some(Ok(())); break 'frames; }
                            Ok(other) => { bad = Some(Err((frame::ERR_PROTOCOL_VIOLATION, format!("unexpected {:?}", other.command())))); break 'frames; }
                            Err(e) => { bad = Some(Err((e.code(), e.to_string()))); break 'frames; }
                        }
                    }
                }
                outstanding += batch.len() as u64;
                if outstanding > window {
                    bad = Some(Err((frame::ERR_PROTOCOL_VIOLATION, "deliveries beyond the credit granted".to_owned())));
                }
                if !reply.is_empty() {
                    let _ = out_tx.send((reply, 0));
                }
                match bad {
                    Some(Ok(())) => break Ok(()),
                    Some(Err((code, why))) => {
                        let _ = sink.send(WsMessage::Binary(refuse(code, &why).into())).await;
                        break Err(DeliveryError::protocol(why));
                    }
                    None => {}
                }
                if !batch.is_empty() {
                    let ctx = ctx.clone();
                    let out_tx = out_tx.clone();
                    batches.spawn(async move { process(ctx, batch, out_tx).await });
                }
                if let Some(end) = ended {
                    break end;
                }
            }
            Some((mut bytes, mut settled)) = out_rx.recv() => {
                while let Ok((more, n)) = out_rx.try_recv() {
                    bytes.extend_from_slice(&more);
                    settled += n;
                }
                // Every ack and nack returns one credit.
                outstanding = outstanding.saturating_sub(settled);
                if settled > 0 {
                    let _ = frame::encode(&Frame::Credit { n: settled as u32 }, &mut bytes);
                }
                if let Err(e) = sink.send(WsMessage::Binary(bytes.into())).await { break Err(e.into()); }
            }
            Some(_) = batches.join_next() => {}
            _ = shutdown.changed() => {
                let mut out = Vec::new();
                let _ = frame::encode(&Frame::Close { code: frame::ERR_GOING_AWAY, reason: "shutting down" }, &mut out);
                let _ = sink.send(WsMessage::Binary(out.into())).await;
                break Ok(());
            }
        }
    };
    // Handlers already running finish and record their results; acks may no longer reach anyone, and
    // the next delivery of those messages finds them done.
    while batches.join_next().await.is_some() {}
    result
}

/// Claims, runs, records and acknowledges one batch of deliveries.
async fn process<H: Handler>(
    ctx: Arc<Ctx<H>>,
    batch: Vec<Message>,
    out: mpsc::UnboundedSender<(Vec<u8>, u64)>,
) {
    let retention = ctx.opts.retention.as_secs().max(1);
    let mut waiting = batch;
    let mut reply = Vec::new();
    let mut settled = 0u64;
    let mut delay = Duration::from_millis(20);
    while !waiting.is_empty() {
        // Check and mark in one step: a second delivery arriving while the first is being claimed
        // or run here waits for it instead of running it again.
        let (local, todo): (Vec<Message>, Vec<Message>) = {
            let mut running = ctx.running();
            waiting
                .into_iter()
                .partition(|m| !running.insert((m.partition, m.id)))
        };
        let unmark = |ms: &[Message]| {
            let mut running = ctx.running();
            for m in ms {
                running.remove(&(m.partition, m.id));
            }
        };
        let ids: Vec<(u16, MessageId)> = todo.iter().map(|m| (m.partition, m.id)).collect();
        let states = match ctx
            .store
            .claim(
                &ctx.owner,
                ctx.opts.claim_ttl.as_millis() as u64,
                retention,
                &ids,
            )
            .await
        {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "claim failed; retrying");
                unmark(&todo);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
                let mut all = todo;
                all.extend(local);
                waiting = all;
                continue;
            }
        };
        let mut run = Vec::new();
        let mut already = Vec::new();
        let mut later = local;
        let mut not_run = Vec::new();
        for (m, s) in todo.into_iter().zip(states) {
            match s {
                ClaimState::Run => run.push(m),
                ClaimState::Done => {
                    not_run.push(m.clone());
                    metrics::counter!(telemetry::ALREADY_DONE).increment(1);
                    already.push((m.partition, m.id, false));
                    m.ack(&mut reply);
                    settled += 1;
                }
                ClaimState::Busy => {
                    not_run.push(m.clone());
                    later.push(m);
                }
            }
        }
        unmark(&not_run);
        if !already.is_empty() {
            ctx.handler.recorded(&already);
        }
        if !run.is_empty() {
            settled += run.len() as u64; // each gets an Ack or a Nack
            run_handlers(&ctx, run, &mut reply).await;
        }
        if !reply.is_empty() {
            let _ = out.send((std::mem::take(&mut reply), std::mem::take(&mut settled)));
        }
        waiting = later;
        if !waiting.is_empty() {
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
}

async fn run_handlers<H: Handler>(ctx: &Arc<Ctx<H>>, run: Vec<Message>, reply: &mut Vec<u8>) {
    let retention = ctx.opts.retention.as_secs().max(1);
    let mut outcomes = Vec::with_capacity(run.len());
    let ids: Vec<(u16, MessageId)> = run.iter().map(|m| (m.partition, m.id)).collect();
    ctx.handler.running(&ids);
    for m in &run {
        let o = ctx.handler.handle(m.clone()).await;
        metrics::counter!(telemetry::HANDLED).increment(1);
        outcomes.push(o);
    }
    let done: Vec<(u16, MessageId, &[u8])> = run
        .iter()
        .zip(&outcomes)
        .filter_map(|(m, o)| match o {
            Outcome::Done(r) => Some((m.partition, m.id, r.as_slice())),
            _ => None,
        })
        .collect();
    // The handlers ran; their results must be recorded before we say anything. Retry what failed
    // (only that: the rest is recorded).
    let mut recorded: Vec<Option<bool>> = vec![None; done.len()];
    let mut delay = Duration::from_millis(20);
    loop {
        let todo: Vec<usize> = (0..done.len()).filter(|&i| recorded[i].is_none()).collect();
        if todo.is_empty() {
            break;
        }
        let batch: Vec<(u16, MessageId, &[u8])> = todo.iter().map(|&i| done[i]).collect();
        let (states, error) = ctx.store.complete(retention, &batch).await;
        for (&i, s) in todo.iter().zip(states) {
            recorded[i] = s;
        }
        if let Some(e) = error {
            tracing::warn!(error = %e, "recording results failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(1));
        }
    }
    let recorded: Vec<bool> = recorded.into_iter().map(|r| r.unwrap_or(false)).collect();
    let retry: Vec<(u16, MessageId)> = run
        .iter()
        .zip(&outcomes)
        .filter(|(_, o)| matches!(o, Outcome::Retry(_)))
        .map(|(m, _)| (m.partition, m.id))
        .collect();
    if !retry.is_empty() {
        let _ = ctx.store.unclaim(&ctx.owner, &retry).await;
    }
    let mut rec = recorded.into_iter();
    let mut audit = Vec::with_capacity(run.len());
    for (m, o) in run.iter().zip(&outcomes) {
        match o {
            Outcome::Done(_) => {
                let first = rec.next().unwrap_or(false);
                if first {
                    metrics::counter!(telemetry::RECORDED).increment(1);
                } else {
                    metrics::counter!(telemetry::ALREADY_DONE).increment(1);
                }
                audit.push((m.partition, m.id, first));
                m.ack(reply);
            }
            Outcome::Retry(reason) | Outcome::Reject(reason) => {
                let _ = frame::encode(
                    &Frame::Nack {
                        partition: m.partition,
                        epoch: m.epoch,
                        id: m.id,
                        reject: matches!(o, Outcome::Reject(_)),
                        reason: truncate(reason, 1024),
                    },
                    reply,
                );
            }
        }
    }
    ctx.handler.recorded(&audit);
    let mut running = ctx.running();
    for m in &run {
        running.remove(&(m.partition, m.id));
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

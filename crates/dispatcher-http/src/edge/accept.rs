//! The accept loop: takes a connection only when the caps allow (closing it at once otherwise), serves it
//! with hyper's HTTP/1 under the header timeout, closes it when nothing has moved for the idle timeout,
//! and on shutdown lets open requests finish.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tower::ServiceExt;

use super::EdgeOptions;
use super::io::{Activity, Watched};
use super::slots::{Slot, Slots};
use crate::telemetry;

/// Serves `router` on `listener` under the limits of `edge` until `shutdown` resolves, then lets open
/// requests finish (live streams end on the app's own shutdown signal).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    edge: &EdgeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Slots::new(
        edge.max_connections,
        edge.max_connections_per_ip,
    ));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(edge.header_timeout)
        .keep_alive(true);
    let builder = Arc::new(builder);
    let mut connections = tokio::task::JoinSet::new();
    let mut last_accept_warning: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => accepted,
            // Reap finished connection tasks as they end, so the set does not grow.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors (EMFILE/ENFILE) or a connection reset before it was taken: wait a
                // little so a full table does not spin the loop, and say so at most once a second.
                if last_accept_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    last_accept_warning = Some(Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let slot = match slots.try_take(peer.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                metrics::counter!(telemetry::HTTP_CONNECTIONS_REFUSED_TOTAL, "cap" => refusal.as_str())
                    .increment(1);
                // Dropping the socket closes it: the descriptor is free again at once.
                drop(tcp);
                continue;
            }
        };
        metrics::gauge!(telemetry::HTTP_CONNECTIONS_OPEN).increment(1.0);
        connections.spawn(serve_connection(
            tcp,
            peer,
            router.clone(),
            builder.clone(),
            edge.idle_timeout,
            stop_rx.clone(),
            slot,
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection(
    tcp: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: Arc<hyper::server::conn::http1::Builder>,
    idle_timeout: Duration,
    mut stop: watch::Receiver<bool>,
    slot: Slot,
) {
    // Small JSON answers must not wait for Nagle's algorithm (40 ms stalls with delayed ACKs).
    let _ = tcp.set_nodelay(true);
    let activity = Activity::new();
    let io = TokioIo::new(Watched::new(tcp, activity.clone()));
    let service = router.map_request(move |mut req: axum::http::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req
    });
    let conn = builder.serve_connection(io, TowerToHyperService::new(service));
    tokio::pin!(conn);
    let check = (idle_timeout / 4).max(Duration::from_millis(10));
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            changed = stop.changed(), if !draining => {
                // Either the server stops or its stop sender is gone: finish what is open, take nothing new.
                let _ = changed;
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(check) => {
                if activity.quiet_for() >= idle_timeout {
                    metrics::counter!(telemetry::HTTP_TIMEOUTS_TOTAL, "timeout" => "idle").increment(1);
                    break;
                }
            }
        }
    }
    drop(slot);
    metrics::gauge!(telemetry::HTTP_CONNECTIONS_OPEN).decrement(1.0);
}

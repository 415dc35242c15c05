//! The waiting room as people use it over HTTP: the visitor API (join, status, heartbeat, leave, complete,
//! live updates), the admin API (events, tickets, revocations, keys), entry tokens and their JWKS, the
//! waiting page and operator dashboard, `/openapi.json`, `/metrics`, `/healthz` and `/readyz`.
//!
//! The crate knows HTTP, not Redis: every state change goes through the [`AdmissionStore`] trait.

mod admin;
mod edge;
pub mod error;
mod extract;
pub mod limits;
pub mod live;
pub mod openapi;
mod pages;
pub mod telemetry;
pub mod tokens;
pub mod view;
mod visitor;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dispatcher_admission::{AdmissionStore, Coalescer, EventId, EventSettings, UserId};
use metrics_exporter_prometheus::PrometheusHandle;
use parking_lot::RwLock;

pub use edge::{EdgeOptions, Refusal, Slot, Slots, serve};
pub use error::{ApiError, ApiResult};
pub use limits::{KeyedLimiter, Rate};
pub use live::{Hub, LiveOptions};
pub use tokens::Tokens;
pub use view::TicketView;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// The admin bearer token; `None` disables the admin API (every admin call gets 401).
    pub admin_token: Option<String>,
    /// Joins per client address.
    pub join_rate_per_ip: Rate,
    /// Joins per user id.
    pub join_rate_per_user: Rate,
    /// Visitor requests of any kind per client address.
    pub request_rate_per_ip: Rate,
    /// Take the client address from `X-Forwarded-For` (only behind a trusted proxy): the last hop of the
    /// last header line, the one the proxy appended; every earlier hop is the client's word.
    pub trust_forwarded_for: bool,
    /// Largest accepted request body, bytes.
    pub max_body_bytes: usize,
    /// Origins the waiting page may send an admitted visitor on to (`https://shop.example`); relative
    /// paths are always allowed.
    pub redirect_origins: Vec<String>,
    /// Live updates.
    pub live: LiveOptions,
    /// Coalesce concurrent joins of one event into one store call (at most this many; 1 = off).
    pub join_batch: usize,
    /// Connection caps and timeouts of the HTTP edge, and the caps on live streams.
    pub edge: EdgeOptions,
    /// How long a visitor call may wait for the store before it answers 503 (or, for a join of an event
    /// that fails open, lets the visitor through).
    pub visitor_budget: Duration,
    /// Failed admin authentications per client address: beyond the burst, 429 until the bucket refills.
    pub admin_failure_rate: Rate,
    /// Serve `/metrics` on the public port; off when a separate metrics address is used.
    pub public_metrics: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            admin_token: None,
            join_rate_per_ip: Rate::new(5.0, 20.0),
            join_rate_per_user: Rate::new(1.0, 5.0),
            request_rate_per_ip: Rate::new(50.0, 200.0),
            trust_forwarded_for: false,
            max_body_bytes: 16 * 1024,
            redirect_origins: Vec::new(),
            live: LiveOptions::default(),
            join_batch: 256,
            edge: EdgeOptions::default(),
            visitor_budget: Duration::from_secs(2),
            admin_failure_rate: Rate::new(0.2, 10.0),
            public_metrics: true,
        }
    }
}

/// The state of an engine the process runs, as `/readyz` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineState {
    /// Not running yet or no longer: waiting for a dependency (a database, a store) to answer.
    Connecting,
    /// Working.
    Running,
    /// Stopped (failed, or turned off while the process runs).
    Stopped,
}

impl EngineState {
    /// The word `/readyz` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            EngineState::Connecting => "connecting",
            EngineState::Running => "running",
            EngineState::Stopped => "stopped",
        }
    }
}

/// Everything the handlers share.
pub struct App<S> {
    /// The admission store.
    pub store: Arc<S>,
    /// Signing keys.
    pub tokens: Arc<Tokens>,
    /// Live updates.
    pub hub: Arc<Hub<S>>,
    /// Per-request calls (joins, heartbeats, status reads, releases) coalesced per event.
    pub calls: Coalescer<S>,
    /// Settings.
    pub opts: HttpOptions,
    join_ip: KeyedLimiter<IpAddr>,
    join_user: KeyedLimiter<(EventId, UserId)>,
    request_ip: KeyedLimiter<IpAddr>,
    admin_failures: KeyedLimiter<IpAddr>,
    live_streams: Slots<IpAddr>,
    /// Waiting and admitted per event as last read, rendered on `/metrics` (a deleted event's series go
    /// with it).
    event_counts: RwLock<std::collections::BTreeMap<EventId, (u64, u64)>>,
    /// Events' settings as last seen, so a join can fail open while the store is down.
    settings: RwLock<HashMap<EventId, EventSettings>>,
    promoter_running: AtomicBool,
    /// Other engines the process runs (e.g. `outbox`), by name, for `/readyz`.
    engines: RwLock<std::collections::BTreeMap<String, EngineState>>,
    metrics: Option<PrometheusHandle>,
    shutdown: tokio::sync::watch::Sender<bool>,
}

impl<S> std::fmt::Debug for App<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("opts.live", &self.opts.live)
            .finish()
    }
}

impl<S: AdmissionStore> App<S> {
    /// The shared state over `store`.
    pub fn new(
        store: Arc<S>,
        tokens: Arc<Tokens>,
        opts: HttpOptions,
        metrics: Option<PrometheusHandle>,
    ) -> Arc<Self> {
        let hub = Arc::new(Hub::new(store.clone(), tokens.clone(), opts.live.clone()));
        let calls = Coalescer::new(store.clone(), opts.join_batch, 1);
        Arc::new(Self {
            store,
            tokens,
            hub,
            calls,
            join_ip: KeyedLimiter::new(opts.join_rate_per_ip),
            join_user: KeyedLimiter::new(opts.join_rate_per_user),
            request_ip: KeyedLimiter::new(opts.request_rate_per_ip),
            admin_failures: KeyedLimiter::new(opts.admin_failure_rate),
            live_streams: Slots::new(
                opts.edge.max_live_streams,
                opts.edge.max_live_streams_per_ip,
            ),
            event_counts: RwLock::new(std::collections::BTreeMap::new()),
            opts,
            settings: RwLock::new(HashMap::new()),
            promoter_running: AtomicBool::new(false),
            engines: RwLock::new(std::collections::BTreeMap::new()),
            metrics,
            shutdown: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Ends every live stream, so a graceful shutdown is not held open by waiting visitors (their
    /// browsers reconnect to another instance).
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub(crate) fn shutdown_signal(&self) -> tokio::sync::watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    /// Tells `/readyz` whether this process's promoter runs.
    pub fn set_promoter_running(&self, running: bool) {
        self.promoter_running.store(running, Ordering::Relaxed);
    }

    /// Tells `/readyz` the state of another engine this process runs (e.g. `"outbox"`): it is listed
    /// under that name, and the process is ready only while every listed engine is
    /// [`Running`](EngineState::Running).
    pub fn set_engine_state(&self, name: &str, state: EngineState) {
        self.engines.write().insert(name.to_owned(), state);
    }

    /// Remembers an event's settings (for fail-open decisions while the store is down).
    pub fn remember_settings(&self, event: &EventId, settings: &EventSettings) {
        self.settings
            .write()
            .insert(event.clone(), settings.clone());
    }

    pub(crate) fn known_settings(&self, event: &EventId) -> Option<EventSettings> {
        self.settings.read().get(event).cloned()
    }

    pub(crate) fn forget_settings(&self, event: &EventId) {
        self.settings.write().remove(event);
    }

    /// Background work of the HTTP layer: live updates, key reloads, event gauges and the settings cache.
    /// Runs until `shutdown` resolves.
    pub async fn run_background(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        let hub = self.hub.clone().run(std::future::pending());
        let app = self.clone();
        let upkeep = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(2));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut since_reload = 0u32;
            loop {
                tick.tick().await;
                since_reload += 1;
                if since_reload >= 5 {
                    since_reload = 0;
                    if let Err(e) = app.tokens.reload() {
                        tracing::warn!(error = %e, "reloading signing keys failed; keeping the ones in force");
                    }
                }
                app.refresh_events().await;
            }
        };
        tokio::select! {
            _ = shutdown => {}
            _ = hub => {}
            _ = upkeep => {}
        }
    }

    /// Re-reads the settings and counts of every configured event: the fail-open cache and the per-event
    /// gauges.
    pub async fn refresh_events(&self) {
        let shards = self.store.shard_count();
        let lists = futures_util::future::join_all((0..shards).map(|s| self.store.events(s))).await;
        let mut complete = true;
        let mut seen = std::collections::HashSet::new();
        for list in lists {
            let Ok(list) = list else {
                metrics::counter!(telemetry::REDIS_ERRORS_TOTAL, "op" => "events").increment(1);
                complete = false;
                continue;
            };
            seen.extend(list);
        }
        // The reads travel together (pipelined on one connection, 64 at a time), not one round trip after
        // another.
        let ids: Vec<EventId> = seen.iter().cloned().collect();
        let mut infos = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(64) {
            let reads: Vec<_> = chunk.iter().map(|e| self.store.event(e)).collect();
            infos.extend(futures_util::future::join_all(reads).await);
        }
        for info in infos.into_iter().flatten() {
            self.remember_settings(&info.id, &info.settings);
            self.event_counts
                .write()
                .insert(info.id.clone(), (info.waiting, info.admitted));
        }
        // Events deleted elsewhere leave the cache and the metrics (only after a complete listing).
        if complete {
            self.settings.write().retain(|e, _| seen.contains(e));
            self.event_counts.write().retain(|e, _| seen.contains(e));
        }
    }

    /// Drops an event's series from `/metrics` (the event was deleted).
    pub(crate) fn forget_event_gauges(&self, event: &EventId) {
        self.event_counts.write().remove(event);
    }

    /// The client address of a request.
    pub(crate) fn client_ip(&self, peer: Option<SocketAddr>, headers: &HeaderMap) -> IpAddr {
        if self.opts.trust_forwarded_for
            && let Some(ip) = last_forwarded_hop(headers)
        {
            return ip;
        }
        peer.map(|p| p.ip())
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    /// A place for one live stream of a client address, or the cap that refuses it.
    pub(crate) fn take_live_slot(&self, ip: IpAddr) -> Result<Slot, Refusal> {
        self.live_streams.try_take(ip)
    }

    /// The metrics page: the recorder's series and the per-event gauges.
    pub fn render_metrics(&self) -> Option<String> {
        let mut page = self.metrics.as_ref()?.render();
        render_event_gauges(&mut page, &self.event_counts.read());
        Some(page)
    }
}

/// The client address a trusted proxy appended: the last hop of the last `X-Forwarded-For` line. A proxy
/// appends to the last line; a client can send lines of its own before it, so the first line (or any
/// earlier hop) proves nothing.
fn last_forwarded_hop(headers: &HeaderMap) -> Option<IpAddr> {
    let last_line = headers.get_all("x-forwarded-for").iter().next_back()?;
    let hop = last_line.to_str().ok()?.rsplit(',').next()?.trim();
    hop.parse::<IpAddr>().ok()
}

/// Appends the per-event gauges in Prometheus text format.
fn render_event_gauges(
    page: &mut String,
    counts: &std::collections::BTreeMap<EventId, (u64, u64)>,
) {
    use std::fmt::Write;
    if counts.is_empty() {
        return;
    }
    for (name, help, waiting) in [
        (telemetry::EVENT_WAITING, "Tickets waiting per event.", true),
        (
            telemetry::EVENT_ADMITTED,
            "Tickets admitted per event.",
            false,
        ),
    ] {
        let _ = writeln!(page, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (event, c) in counts {
            // Event ids are ASCII letters, digits, '.', '_' and '-': nothing to escape in a label.
            let v = if waiting { c.0 } else { c.1 };
            let _ = writeln!(page, "{name}{{event=\"{event}\"}} {v}");
        }
    }
}

/// The router of the whole HTTP surface.
pub fn router<S: AdmissionStore>(app: Arc<App<S>>) -> Router {
    // Joins have their own per-address limit (checked in the handler), so the general one is not
    // paid twice on the hottest route.
    let joins = Router::new().route("/v1/events/{event}/tickets", post(visitor::join::<S>));
    let visitor = Router::new()
        .route(
            "/v1/events/{event}/tickets/{ticket}",
            get(visitor::status::<S>),
        )
        .route(
            "/v1/events/{event}/tickets/{ticket}/heartbeat",
            post(visitor::heartbeat::<S>),
        )
        .route(
            "/v1/events/{event}/tickets/{ticket}/leave",
            post(visitor::leave::<S>),
        )
        .route(
            "/v1/events/{event}/tickets/{ticket}/complete",
            post(visitor::complete::<S>),
        )
        .route(
            "/v1/events/{event}/tickets/{ticket}/live",
            get(visitor::live::<S>),
        )
        .route("/v1/events/{event}", get(visitor::public_event::<S>))
        .layer(axum::middleware::from_fn_with_state(
            app.clone(),
            visitor::limit_requests::<S>,
        ));
    let admin = admin::routes::<S>().layer(axum::middleware::from_fn_with_state(
        app.clone(),
        admin::require_admin::<S>,
    ));
    Router::new()
        .merge(joins)
        .merge(visitor)
        .merge(admin)
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz::<S>))
        .route("/metrics", get(metrics_page::<S>))
        .route("/openapi.json", get(openapi::serve))
        .route("/.well-known/jwks.json", get(jwks::<S>))
        .merge(pages::routes::<S>())
        .fallback(|| async { ApiError::no_route() })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(axum::middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(app.opts.max_body_bytes))
        .layer(axum::middleware::from_fn({
            let (budget, limit) = (app.opts.edge.body_timeout, app.opts.max_body_bytes);
            move |req, next| edge::read_body_within(budget, limit, req, next)
        }))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            |_: Box<dyn std::any::Any + Send>| {
                tracing::error!("a request handler panicked");
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
                .into_response()
            },
        ))
        .with_state(app)
}

/// Route templates as static strings, so counting a request allocates nothing.
const ROUTES: &[&str] = &[
    "/v1/events/{event}/tickets",
    "/v1/events/{event}/tickets/{ticket}",
    "/v1/events/{event}/tickets/{ticket}/heartbeat",
    "/v1/events/{event}/tickets/{ticket}/leave",
    "/v1/events/{event}/tickets/{ticket}/complete",
    "/v1/events/{event}/tickets/{ticket}/live",
    "/v1/events/{event}",
    "/v1/admin/events",
    "/v1/admin/events/{event}",
    "/v1/admin/events/{event}/pause",
    "/v1/admin/events/{event}/resume",
    "/v1/admin/events/{event}/close",
    "/v1/admin/events/{event}/tickets/{ticket}",
    "/v1/admin/events/{event}/tickets/{ticket}/complete",
    "/v1/admin/events/{event}/tickets/{ticket}/revoke",
    "/v1/admin/events/{event}/revocations",
    "/v1/admin/keys",
    "/v1/admin/keys/rotate",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/.well-known/jwks.json",
    "/wait/{event}",
    "/dashboard",
];

async fn count_requests(req: Request, next: Next) -> Response {
    let route: &'static str = match req.extensions().get::<MatchedPath>() {
        Some(m) => ROUTES
            .iter()
            .find(|r| **r == m.as_str())
            .copied()
            .unwrap_or("other"),
        None => "unmatched",
    };
    let resp = next.run(req).await;
    metrics::counter!(
        telemetry::HTTP_REQUESTS_TOTAL,
        "route" => route,
        "status" => status_label(resp.status())
    )
    .increment(1);
    resp
}

/// The status code as a label, without allocating for the codes the API answers with.
fn status_label(s: StatusCode) -> metrics::SharedString {
    let known: &'static str = match s.as_u16() {
        200 => "200",
        201 => "201",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        429 => "429",
        500 => "500",
        503 => "503",
        other => return metrics::SharedString::from(other.to_string()),
    };
    metrics::SharedString::const_str(known)
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({ "status": "ok" }))
}

async fn readyz<S: AdmissionStore>(State(app): State<Arc<App<S>>>) -> Response {
    let store_ok = matches!(
        tokio::time::timeout(Duration::from_secs(1), app.store.now_ms()).await,
        Ok(Ok(_))
    );
    let promoter = app.promoter_running.load(Ordering::Relaxed);
    let mut body = serde_json::json!({
        "store": if store_ok { "ok" } else { "unreachable" },
        "promoter": if promoter { "running" } else { "stopped" },
    });
    let mut engines_ok = true;
    for (name, state) in app.engines.read().iter() {
        engines_ok &= *state == EngineState::Running;
        body[name.as_str()] = serde_json::Value::from(state.as_str());
    }
    let status = if store_ok && promoter && engines_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(body)).into_response()
}

async fn metrics_page<S: AdmissionStore>(State(app): State<Arc<App<S>>>) -> Response {
    if !app.opts.public_metrics {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_elsewhere",
            "metrics are served on the metrics address, not here",
        )
        .into_response();
    }
    metrics_answer(&app)
}

fn metrics_answer<S: AdmissionStore>(app: &App<S>) -> Response {
    match app.render_metrics() {
        Some(page) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            page,
        )
            .into_response(),
        None => ApiError::new(
            StatusCode::NOT_FOUND,
            "metrics_disabled",
            "no metrics recorder is installed in this process",
        )
        .into_response(),
    }
}

/// The router of a separate metrics address: `/metrics` only.
pub fn metrics_router<S: AdmissionStore>(app: Arc<App<S>>) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(app): State<Arc<App<S>>>| async move { metrics_answer(&app) }),
        )
        .fallback(|| async { ApiError::no_route() })
        .with_state(app)
}

async fn jwks<S: AdmissionStore>(State(app): State<Arc<App<S>>>) -> Response {
    (
        [(axum::http::header::CACHE_CONTROL, "public, max-age=60")],
        axum::Json(app.tokens.jwks()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::ROUTES;
    use super::*;

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", l.parse().expect("header value"));
        }
        h
    }

    #[test]
    fn the_trusted_hop_is_the_last_of_the_last_line() {
        let ip = |s: &str| s.parse::<IpAddr>().expect("ip");
        assert_eq!(last_forwarded_hop(&xff(&["1.1.1.1"])), Some(ip("1.1.1.1")));
        assert_eq!(
            last_forwarded_hop(&xff(&["6.6.6.6, 1.1.1.1"])),
            Some(ip("1.1.1.1"))
        );
        // A client-sent first line cannot choose the address: the proxy appended its own line last.
        assert_eq!(
            last_forwarded_hop(&xff(&["6.6.6.6", "7.7.7.7, 2.2.2.2"])),
            Some(ip("2.2.2.2"))
        );
        assert_eq!(last_forwarded_hop(&xff(&["1.1.1.1", "junk"])), None);
        assert_eq!(last_forwarded_hop(&HeaderMap::new()), None);
    }

    #[test]
    fn event_gauges_render_as_prometheus_text() {
        let mut counts = std::collections::BTreeMap::new();
        counts.insert(EventId::new("drop-1").expect("id"), (7, 3));
        let mut page = String::new();
        render_event_gauges(&mut page, &counts);
        assert!(page.contains("# TYPE dispatcher_event_waiting gauge\n"));
        assert!(page.contains("dispatcher_event_waiting{event=\"drop-1\"} 7\n"));
        assert!(page.contains("dispatcher_event_admitted{event=\"drop-1\"} 3\n"));
        let mut empty = String::new();
        render_event_gauges(&mut empty, &std::collections::BTreeMap::new());
        assert!(empty.is_empty());
    }

    #[test]
    fn the_metric_route_labels_cover_every_documented_route() {
        let mut documented: Vec<String> = crate::openapi::operations()
            .into_iter()
            .map(|(_, path)| path)
            .collect();
        documented.sort();
        documented.dedup();
        let mut labels: Vec<String> = ROUTES.iter().map(|r| r.to_string()).collect();
        labels.sort();
        assert_eq!(
            labels, documented,
            "ROUTES must list exactly the routes of /openapi.json"
        );
    }
}

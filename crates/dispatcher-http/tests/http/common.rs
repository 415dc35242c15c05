//! The test server: a private `redis-server` (testkit), the Redis store, the HTTP app served on a real
//! loopback listener with its background work and a promoter, and a small hyper client that talks to it.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use dispatcher_admission::{
    AdmissionStore, EventId, EventInfo, EventSettings, Promoter, PromoterOptions, RedisStore,
    RedisStoreOptions,
};
use dispatcher_http::{App, HttpOptions, LiveOptions, Rate, Tokens};
use dispatcher_token::Verifier;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::Value;

/// The admin bearer token of every test server.
pub const ADMIN: &str = "admin-token-for-tests-0123456789";

/// How long a test waits for something that must happen (generous: a correctness bound, not speed).
pub const PATIENCE: Duration = Duration::from_secs(20);

/// How a test server is set up.
#[derive(Debug)]
pub struct Setup {
    /// HTTP options (admin token preset; limits generous but on).
    pub http: HttpOptions,
    /// Sign with keys in a temporary key directory (so keys can rotate) instead of in memory.
    pub key_dir: bool,
    /// Serve `/metrics` from the process-wide recorder.
    pub metrics: bool,
    /// Run a promoter beside the app.
    pub promoter: bool,
    /// Extra `redis-server` arguments.
    pub redis_args: Vec<String>,
    /// Redis with AOF (`appendfsync always`), so its data survives a restart.
    pub aof: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            http: HttpOptions {
                admin_token: Some(ADMIN.to_owned()),
                join_rate_per_ip: Rate::new(1_000.0, 1_000.0),
                join_rate_per_user: Rate::new(1_000.0, 1_000.0),
                request_rate_per_ip: Rate::new(10_000.0, 10_000.0),
                admin_failure_rate: Rate::new(1_000.0, 1_000.0),
                live: LiveOptions {
                    interval: Duration::from_millis(200),
                    ..Default::default()
                },
                ..Default::default()
            },
            key_dir: false,
            metrics: false,
            promoter: true,
            redis_args: Vec::new(),
            aof: false,
        }
    }
}

/// The process-wide Prometheus recorder, installed once (every test of this binary that wants metrics
/// shares it; under nextest each test is its own process anyway).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).expect("install the metrics recorder once");
            handle
        })
        .clone()
}

/// An answer: status, headers and the whole body.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Resp {
    /// The body as JSON; panics naming the status and body when it is not.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The stable error code of an error answer; panics when the body is not `{"error": {"code", …}}`.
    pub fn code(&self) -> String {
        let v = self.json();
        let code = v
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("status {}: no error.code in {v}", self.status));
        assert!(
            v.pointer("/error/message")
                .and_then(Value::as_str)
                .is_some(),
            "status {}: no error.message in {v}",
            self.status
        );
        code.to_owned()
    }

    /// Asserts the status and the error code.
    #[track_caller]
    pub fn expect_error(&self, status: u16, code: &str) {
        assert_eq!(
            self.status.as_u16(),
            status,
            "expected {status} {code}, got {} {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(self.code(), code, "error code of a {status}");
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "error bodies are JSON"
        );
    }

    /// Asserts a 2xx status and returns the JSON body.
    #[track_caller]
    pub fn ok(&self) -> Value {
        assert!(
            self.status.is_success(),
            "expected success, got {} {:?}",
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    /// The `Retry-After` header in seconds.
    pub fn retry_after(&self) -> Option<u64> {
        self.headers
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }
}

/// A running test server.
pub struct Server {
    pub redis: testkit::RedisServer,
    pub store: Arc<RedisStore>,
    pub app: Arc<App<RedisStore>>,
    pub addr: SocketAddr,
    client: Client<HttpConnector, Full<Bytes>>,
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    _keys: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("addr", &self.addr).finish()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.app.begin_shutdown();
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Server {
    /// A server with the default setup.
    pub async fn start() -> Self {
        Self::start_with(Setup::default()).await
    }

    /// A server with `setup`.
    pub async fn start_with(setup: Setup) -> Self {
        let redis = testkit::RedisServer::start_with(testkit::RedisOptions {
            aof: setup.aof,
            extra_args: setup.redis_args.clone(),
        })
        .expect("spawn a private redis-server");
        let store = Arc::new(
            RedisStore::connect(
                &redis.url(),
                RedisStoreOptions {
                    prefix: "httptest".to_owned(),
                    ..Default::default()
                },
            )
            .await
            .expect("connect to the private Redis"),
        );
        let (tokens, keys) = if setup.key_dir {
            let dir = tempfile::tempdir().expect("key dir");
            let t = Tokens::from_dir(dir.path().join("keys")).expect("keys from dir");
            (t, Some(dir))
        } else {
            (Tokens::ephemeral().expect("in-memory keys"), None)
        };
        let metrics = setup.metrics.then(metrics_handle);
        let app = App::new(store.clone(), Arc::new(tokens), setup.http, metrics);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let (stop, _) = tokio::sync::watch::channel(false);
        let stopped = |stop: &tokio::sync::watch::Sender<bool>| {
            let mut rx = stop.subscribe();
            async move {
                let _ = rx.wait_for(|s| *s).await;
            }
        };
        let mut tasks = Vec::new();
        let router = dispatcher_http::router(app.clone());
        let s = stopped(&stop);
        let edge = app.opts.edge.clone();
        tasks.push(tokio::spawn(async move {
            dispatcher_http::serve(listener, router, &edge, s)
                .await
                .expect("http server");
        }));
        let s = stopped(&stop);
        tasks.push(tokio::spawn(app.clone().run_background(s)));
        if setup.promoter {
            let promoter = Promoter::new(store.clone(), PromoterOptions::default());
            app.set_promoter_running(true);
            let s = stopped(&stop);
            tasks.push(tokio::spawn(promoter.run(s)));
        }
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self {
            redis,
            store,
            app,
            addr,
            client,
            stop,
            tasks,
            _keys: keys,
        }
    }

    /// `http://127.0.0.1:<port>`
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Sends one request. `path` goes on the wire as given (percent-escapes included).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Resp {
        let resp = self.open(method, path, headers, body).await;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = tokio::time::timeout(PATIENCE, resp.into_body().collect())
            .await
            .unwrap_or_else(|_| panic!("{path}: the body did not end"))
            .expect("read body")
            .to_bytes();
        Resp {
            status,
            headers,
            body,
        }
    }

    /// Sends one request and returns the response with its body still streaming.
    pub async fn open(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> hyper::Response<Incoming> {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base()));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let has_body = body.is_some();
        if has_body
            && !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        {
            b = b.header("content-type", "application/json");
        }
        let req = b
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .unwrap_or_else(|e| panic!("build request for {path}: {e}"));
        tokio::time::timeout(PATIENCE, self.client.request(req))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer within {PATIENCE:?}"))
            .unwrap_or_else(|e| panic!("{path}: request failed: {e}"))
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[], None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> Resp {
        self.send(
            Method::POST,
            path,
            &[],
            Some(serde_json::to_vec(body).expect("json")),
        )
        .await
    }

    /// POST without a body.
    pub async fn post_empty(&self, path: &str) -> Resp {
        self.send(Method::POST, path, &[], None).await
    }

    /// An admin call with the right bearer token.
    pub async fn admin(&self, method: Method, path: &str, body: Option<&Value>) -> Resp {
        let auth = format!("Bearer {ADMIN}");
        self.send(
            method,
            path,
            &[("authorization", auth.as_str())],
            body.map(|b| serde_json::to_vec(b).expect("json")),
        )
        .await
    }

    /// Creates or configures an event through the admin API; returns the status.
    pub async fn configure(&self, event: &str, settings: Value) -> StatusCode {
        let r = self
            .admin(
                Method::PUT,
                &format!("/v1/admin/events/{event}"),
                Some(&settings),
            )
            .await;
        r.ok();
        r.status
    }

    /// Joins `event` (with `user` when given); returns the answer.
    pub async fn join(&self, event: &str, user: Option<&str>) -> Resp {
        let path = format!("/v1/events/{event}/tickets");
        match user {
            Some(u) => self.post(&path, &serde_json::json!({ "user": u })).await,
            None => self.post_empty(&path).await,
        }
    }

    /// Joins and returns the ticket JSON (asserting success).
    pub async fn join_ok(&self, event: &str, user: Option<&str>) -> Value {
        let r = self.join(event, user).await;
        assert!(
            r.status == StatusCode::CREATED || r.status == StatusCode::OK,
            "join {event}: {} {:?}",
            r.status,
            String::from_utf8_lossy(&r.body)
        );
        r.json()
    }

    /// A visitor's status read of a ticket.
    pub async fn status(&self, event: &str, ticket: &str) -> Resp {
        self.get(&format!("/v1/events/{event}/tickets/{ticket}"))
            .await
    }

    /// The verifier of the keys the server publishes.
    pub async fn verifier(&self) -> Verifier {
        let r = self.get("/.well-known/jwks.json").await;
        assert_eq!(r.status, StatusCode::OK);
        Verifier::from_jwks_json(&r.body).expect("the JWKS parses")
    }

    /// Reads the event's counts straight from the store.
    pub async fn info(&self, event: &str) -> EventInfo {
        self.store
            .event(&EventId::new(event).expect("event id"))
            .await
            .expect("event info")
    }

    /// A snapshot of everything the store holds: every key with a digest of its value. Two equal
    /// snapshots mean nothing changed.
    pub fn snapshot(&self) -> BTreeSet<(String, String)> {
        let mut c = self.redis.connect().expect("connect");
        let keys = c.command(&["KEYS", "*"]).expect("KEYS");
        let mut out = BTreeSet::new();
        for k in keys.as_array().unwrap_or_default() {
            let k = k.as_text().expect("key text");
            let dump = c.command(&["DUMP", &k]).expect("DUMP");
            let digest = match dump {
                testkit::RespValue::Bulk(b) => format!("{:x}", fnv(&b)),
                other => format!("{other:?}"),
            };
            out.insert((k, digest));
        }
        out
    }

    /// Waits until `cond` holds (checked every 20 ms), panicking with `what` after [`PATIENCE`].
    pub async fn eventually<F, Fut>(&self, what: &str, mut cond: F)
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + PATIENCE;
        while !cond().await {
            assert!(Instant::now() < deadline, "{what}: not within {PATIENCE:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Event settings as JSON with `capacity` and a session TTL.
pub fn settings(capacity: u64, session_ttl_ms: u64) -> Value {
    serde_json::json!({ "capacity": capacity, "session_ttl_ms": session_ttl_ms })
}

/// Settings as the store's type (for `remember_settings` and direct configuration).
pub fn typed(v: &Value) -> EventSettings {
    serde_json::from_value(v.clone()).expect("event settings")
}

/// The `Content-Type` of a response ("" when absent).
pub fn content_type<B>(resp: &hyper::Response<B>) -> String {
    resp.headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// A JSON string field.
pub fn s<'a>(v: &'a Value, field: &str) -> &'a str {
    v.get(field)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string {field} in {v}"))
}

/// A JSON integer field.
pub fn n(v: &Value, field: &str) -> u64 {
    v.get(field)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no integer {field} in {v}"))
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    dispatcher_admission::system_now_ms() / 1000
}

/// One server-sent event.
#[derive(Debug, Clone)]
pub struct SseEvent {
    pub event: String,
    pub data: Value,
}

/// Reads server-sent events off a streaming body.
pub struct SseReader {
    body: Incoming,
    buf: String,
}

impl std::fmt::Debug for SseReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SseReader").finish_non_exhaustive()
    }
}

impl SseReader {
    pub fn new(body: Incoming) -> Self {
        Self {
            body,
            buf: String::new(),
        }
    }

    /// The next event (comments and keep-alives skipped); `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue;
                }
                let data = serde_json::from_str(&data)
                    .unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {data}"));
                return Some(SseEvent { event, data });
            }
            let frame = tokio::time::timeout(PATIENCE, self.body.frame())
                .await
                .expect("the live stream stayed silent");
            match frame {
                None => return None,
                Some(Err(e)) => panic!("live stream failed: {e}"),
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&d));
                    }
                }
            }
        }
    }
}

//! The visitor API: join, status, heartbeat, leave, complete and the live stream of one ticket. Each
//! ticket call is authorised by the ticket id alone (the secret in the path); a malformed or unknown id
//! answers the same 404, so nothing is learned by guessing.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use dispatcher_admission::{
    AdmissionError, AdmissionStore, EventId, Release, Ticket, TicketId, TicketState, UserId,
};
use dispatcher_token::EntryClaims;
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiBytes, ApiPath, Peer};
use crate::view::TicketView;
use crate::{App, Refusal, telemetry};

/// The body of a join: optional; `{}` or no body at all joins anonymously.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinBody {
    /// The shop's user id: joining twice with the same user returns the same live ticket.
    pub user: Option<String>,
}

/// The answer to leave and complete.
#[derive(Debug, Serialize)]
pub struct ReleaseView {
    /// The ticket after the call.
    pub ticket: TicketView,
    /// False when the ticket already was in that final state.
    pub changed: bool,
    /// Tickets admitted into the freed slot in the same step.
    pub admitted_next: u64,
}

pub(crate) fn event_id(raw: &str) -> ApiResult<EventId> {
    EventId::new(raw).map_err(ApiError::from)
}

/// A ticket id from the path; a malformed one is as unknown as a wrong one.
pub(crate) fn ticket_id(raw: &str) -> ApiResult<TicketId> {
    TicketId::parse(raw).map_err(|_| ApiError::from(AdmissionError::UnknownTicket))
}

/// General per-address limit on every visitor route.
pub(crate) async fn limit_requests<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    peer: Peer,
    req: Request,
    next: Next,
) -> Response {
    let ip = app.client_ip(peer.0, req.headers());
    if let Err(wait) = app.request_ip.check(&ip, Instant::now()) {
        metrics::counter!(telemetry::RATE_LIMITED_TOTAL, "scope" => "ip").increment(1);
        return ApiError::throttled("address", wait).into_response();
    }
    // A store that stops answering must not hold visitors (and their connections) for the store
    // client's own, much longer, timeout. A live stream's budget covers its first read only.
    match tokio::time::timeout(app.opts.visitor_budget, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => {
            metrics::counter!(telemetry::VISITOR_TIMEOUTS_TOTAL).increment(1);
            out_of_budget(app.opts.visitor_budget).into_response()
        }
    }
}

fn out_of_budget(budget: Duration) -> ApiError {
    ApiError::unavailable(format!(
        "the waiting room's store did not answer within {} ms; retry shortly",
        budget.as_millis()
    ))
}

/// A join's body must be declared JSON when there is one: a cross-site form or `text/plain` POST (which a
/// browser sends without asking the server first) cannot join on a user's behalf.
fn check_join_content_type(headers: &HeaderMap, body_is_empty: bool) -> ApiResult<()> {
    let declared = headers
        .get(axum::http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or(""));
    let is_json = |ct: &str| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
    };
    match declared {
        None if body_is_empty => Ok(()),
        Some(ct) if is_json(ct) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "a join with a body needs Content-Type: application/json",
        )),
    }
}

pub(crate) async fn join<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    peer: Peer,
    headers: HeaderMap,
    ApiPath(event): ApiPath<String>,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Response> {
    let started = Instant::now();
    let event = event_id(&event)?;
    let blank = body.iter().all(u8::is_ascii_whitespace);
    check_join_content_type(&headers, body.is_empty())?;
    let body: JoinBody = if blank {
        JoinBody::default()
    } else {
        // serde reads a JSON array as a struct's fields in order: only an object is a join request.
        if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(ApiError::bad_request(
                "invalid_json",
                "the body is not a join request: expected a JSON object",
            ));
        }
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::bad_request(
                "invalid_json",
                format!("the body is not a join request: {e}"),
            )
        })?
    };
    let user = body.user.map(UserId::new).transpose()?;
    let ip = app.client_ip(peer.0, &headers);
    let now = Instant::now();
    if let Err(wait) = app.join_ip.check(&ip, now) {
        metrics::counter!(telemetry::RATE_LIMITED_TOTAL, "scope" => "ip").increment(1);
        return Err(ApiError::throttled("address", wait));
    }
    if let Some(u) = &user
        && let Err(wait) = app.join_user.check(&(event.clone(), u.clone()), now)
    {
        metrics::counter!(telemetry::RATE_LIMITED_TOTAL, "scope" => "user").increment(1);
        return Err(ApiError::throttled("user", wait));
    }
    let joined = tokio::time::timeout(
        app.opts.visitor_budget,
        app.calls.join(&event, user.clone()),
    )
    .await
    .unwrap_or_else(|_| {
        metrics::counter!(telemetry::VISITOR_TIMEOUTS_TOTAL).increment(1);
        Err(AdmissionError::Unavailable(format!(
            "no answer within {} ms",
            app.opts.visitor_budget.as_millis()
        )))
    });
    let joined = match joined {
        Ok(j) => j,
        Err(e) if e.is_retryable() => {
            metrics::counter!(telemetry::REDIS_ERRORS_TOTAL, "op" => "join").increment(1);
            return fail_open_or_closed(&app, &event, user.as_ref(), e);
        }
        Err(e) => return Err(ApiError::from(e)),
    };
    if !joined.created {
        // The user already holds a live ticket. User ids are the client's word, so the answer must not
        // hand that ticket's secret (or token) to whoever names the user: no second ticket is made, and
        // the holder keeps using the ticket it has.
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_joined",
            format!(
                "this user already holds a live ticket for event {event}; use that ticket (a new one \
                 can be had once it has ended)"
            ),
        ));
    }
    if joined.ticket.state == TicketState::Admitted {
        metrics::counter!(telemetry::PROMOTIONS_TOTAL, "source" => "join").increment(1);
    }
    // A ticket admitted at once gets its token in the answer (minted once: the forwarder of this process
    // finds it in the token cache).
    let view = TicketView::of(
        &event,
        &joined.ticket,
        &app.tokens,
        app.hub.rate(event.as_str()),
    );
    metrics::histogram!(telemetry::JOIN_DURATION).record(started.elapsed().as_secs_f64());
    let status = if joined.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(view)).into_response())
}

/// The store is down: an event that fails open lets the visitor through with a token minted here (no
/// ticket exists in the store); every other event refuses with 503 and `Retry-After` (fail closed).
fn fail_open_or_closed<S: AdmissionStore>(
    app: &App<S>,
    event: &EventId,
    user: Option<&UserId>,
    e: AdmissionError,
) -> ApiResult<Response> {
    let now = dispatcher_admission::system_now_ms();
    // Only an event that would let this visitor in now fails open: open, taking joins, past any start.
    let Some(settings) = app.known_settings(event).filter(|s| {
        s.fail_open
            && s.state == dispatcher_admission::EventState::Open
            && !matches!(s.queue_mode, dispatcher_admission::QueueMode::Reject)
            && s.starts_at_ms.is_none_or(|start| now >= start)
    }) else {
        return Err(ApiError::from(e));
    };
    let ticket = TicketId::generate();
    let expires = now + settings.session_ttl_ms;
    let token = app.tokens.mint(&EntryClaims::for_admission(
        event.as_str(),
        user.map(|u| u.as_str().to_owned()),
        ticket.as_str(),
        now,
        expires,
    ));
    let Some(token) = token else {
        return Err(ApiError::from(e));
    };
    metrics::counter!(telemetry::FAIL_OPEN_TOTAL).increment(1);
    tracing::warn!(event = %event, "store unavailable; event fails open: visitor let through");
    let view = TicketView {
        event: event.to_string(),
        ticket: ticket.to_string(),
        state: TicketState::Admitted,
        seq: 0,
        user: user.map(|u| u.to_string()),
        position: None,
        ahead: None,
        estimated_wait_s: None,
        joined_at_ms: now,
        admitted_at_ms: Some(now),
        expires_at_ms: Some(expires),
        ended_at_ms: None,
        token: Some(token),
        fail_open: true,
    };
    Ok((StatusCode::OK, axum::Json(view)).into_response())
}

async fn read_with_presence<S: AdmissionStore>(
    app: &App<S>,
    event: &str,
    ticket: &str,
) -> ApiResult<(EventId, Ticket)> {
    let event = event_id(event)?;
    let ticket = ticket_id(ticket)?;
    let t = app
        .calls
        .heartbeat(&event, &ticket)
        .await
        .map_err(|e| ApiError::store("heartbeat", e))?;
    Ok((event, t))
}

pub(crate) async fn status<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath((event, ticket)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<TicketView>> {
    let (event, t) = read_with_presence(&app, &event, &ticket).await?;
    Ok(axum::Json(TicketView::of(
        &event,
        &t,
        &app.tokens,
        app.hub.rate(event.as_str()),
    )))
}

pub(crate) async fn heartbeat<S: AdmissionStore>(
    state: State<Arc<App<S>>>,
    path: ApiPath<(String, String)>,
) -> ApiResult<axum::Json<TicketView>> {
    status(state, path).await
}

async fn release<S: AdmissionStore>(
    app: &App<S>,
    event: &str,
    ticket: &str,
    how: Release,
) -> ApiResult<ReleaseView> {
    let started = Instant::now();
    let event = event_id(event)?;
    let ticket = ticket_id(ticket)?;
    let r = app
        .calls
        .release(&event, &ticket, how)
        .await
        .map_err(|e| ApiError::store("release", e))?;
    if r.admitted_next > 0 {
        metrics::counter!(telemetry::PROMOTIONS_TOTAL, "source" => "release")
            .increment(r.admitted_next);
    }
    metrics::histogram!(telemetry::ADMIT_DURATION).record(started.elapsed().as_secs_f64());
    Ok(ReleaseView {
        ticket: TicketView::of(&event, &r.ticket, &app.tokens, None),
        changed: r.changed,
        admitted_next: r.admitted_next,
    })
}

pub(crate) async fn leave<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath((event, ticket)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<ReleaseView>> {
    Ok(axum::Json(
        release(&app, &event, &ticket, Release::Leave).await?,
    ))
}

pub(crate) async fn complete<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath((event, ticket)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<ReleaseView>> {
    Ok(axum::Json(
        release(&app, &event, &ticket, Release::Complete).await?,
    ))
}

/// Completes or revokes a ticket on the shop's behalf (admin API).
pub(crate) async fn release_for_admin<S: AdmissionStore>(
    app: &App<S>,
    event: &str,
    ticket: &str,
    how: Release,
) -> ApiResult<ReleaseView> {
    release(app, event, ticket, how).await
}

/// The live stream of one ticket (server-sent events): the current view at once, then every change —
/// `position` events at most once a second while waiting, an `admitted` event with the token the moment
/// the ticket is admitted, a `final` event when it ends (then the stream closes). An open stream is the
/// ticket's presence.
pub(crate) async fn live<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    peer: Peer,
    headers: HeaderMap,
    ApiPath((event, ticket)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    // The stream holds its place (and its connection) until it ends.
    let slot = match app.take_live_slot(app.client_ip(peer.0, &headers)) {
        Ok(slot) => slot,
        Err(refusal) => {
            metrics::counter!(telemetry::LIVE_STREAMS_REFUSED_TOTAL, "cap" => refusal.as_str())
                .increment(1);
            return Err(match refusal {
                Refusal::PerAddress => ApiError::new(
                    StatusCode::TOO_MANY_REQUESTS,
                    "too_many_streams",
                    "this address holds as many live streams as it may; close one or poll the status",
                )
                .retry_after(5),
                Refusal::Total => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too_many_streams",
                    "this server holds as many live streams as it may; poll the status instead",
                )
                .retry_after(5),
            });
        }
    };
    let (event, t) = read_with_presence(&app, &event, &ticket).await?;
    let initial = TicketView::of(&event, &t, &app.tokens, app.hub.rate(event.as_str()));
    if initial.state.is_final() {
        let stream = futures_util::stream::iter([Ok::<_, Infallible>(sse_event(&initial))]);
        return Ok(Sse::new(stream).into_response());
    }
    let Some(mut sub) = app.hub.subscribe(&event, initial) else {
        return Err(ApiError::from(AdmissionError::UnknownTicket));
    };
    // The watch may already hold a newer view (another connection to this ticket saw its admission
    // between our read and the subscription): that is the first event then.
    let first = sse_event(&sub.rx.borrow_and_update());
    let shutdown = app.shutdown_signal();
    let stream = futures_util::stream::unfold(
        (Some(first), sub, shutdown, false),
        |(first, mut sub, mut shutdown, done)| async move {
            if let Some(ev) = first {
                return Some((Ok::<_, Infallible>(ev), (None, sub, shutdown, done)));
            }
            if done {
                return None;
            }
            tokio::select! {
                changed = sub.rx.changed() => {
                    if changed.is_err() {
                        return None;
                    }
                }
                _ = shutdown.wait_for(|s| *s) => return None,
            }
            let v = sub.rx.borrow_and_update().clone();
            let done = v.state.is_final();
            Some((Ok(sse_event(&v)), (None, sub, shutdown, done)))
        },
    );
    // The place is given back when the stream (and so this closure's capture) is dropped.
    let stream = futures_util::StreamExt::map(stream, move |ev| {
        let _held = &slot;
        ev
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn sse_event(v: &TicketView) -> Event {
    Event::default()
        .event(v.kind())
        .json_data(v)
        .unwrap_or_else(|_| Event::default().event("error"))
}

/// What anyone may know of an event: its state and queue length, for the waiting page.
#[derive(Debug, Serialize)]
pub struct PublicEvent {
    /// The event.
    pub event: String,
    /// open, paused or closed.
    pub state: dispatcher_admission::EventState,
    /// fifo, passthrough, reject or prequeue.
    pub queue_mode: dispatcher_admission::QueueMode,
    /// Tickets waiting now.
    pub waiting: u64,
    /// Tickets admitted now.
    pub admitted: u64,
    /// Most tickets admitted at once.
    pub capacity: u64,
    /// Measured admissions per second; `null` while unknown.
    pub admissions_per_s: Option<f64>,
    /// Origins the waiting page may send admitted visitors on to, token in the URL fragment.
    pub redirect_origins: Vec<String>,
    /// Visitors in the pre-queue (a `prequeue` event before its start).
    pub pre_queued: u64,
    /// When a `prequeue` event starts, ms.
    pub starts_at_ms: Option<u64>,
}

pub(crate) async fn public_event<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath(event): ApiPath<String>,
) -> ApiResult<axum::Json<PublicEvent>> {
    let event = event_id(&event)?;
    let info = app
        .store
        .event(&event)
        .await
        .map_err(|e| ApiError::store("event", e))?;
    Ok(axum::Json(PublicEvent {
        event: event.to_string(),
        state: info.settings.state,
        queue_mode: info.settings.queue_mode,
        waiting: info.waiting,
        admitted: info.admitted,
        capacity: info.settings.capacity,
        admissions_per_s: app.hub.rate(event.as_str()),
        redirect_origins: app.opts.redirect_origins.clone(),
        pre_queued: info.pre_queued,
        starts_at_ms: info.settings.starts_at_ms,
    }))
}

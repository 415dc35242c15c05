//! The admin API (the shop's and the operator's): events (create, configure, pause, resume, close,
//! delete, list, statistics), tickets (read, complete, revoke), the revocation list, and signing keys.
//! Every route requires `Authorization: Bearer <admin token>`, compared in constant time.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use dispatcher_admission::{
    AdmissionStore, EventInfo, EventSettings, EventState, Release, TicketState,
};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{ApiError, ApiResult};
use crate::extract::{ApiJson, ApiPath, ApiQuery};
use crate::view::TicketView;
use crate::visitor::{ReleaseView, event_id, release_for_admin, ticket_id};
use crate::{App, telemetry};

pub(crate) fn routes<S: AdmissionStore>() -> Router<Arc<App<S>>> {
    Router::new()
        .route("/v1/admin/events", get(list_events::<S>))
        .route(
            "/v1/admin/events/{event}",
            get(get_event::<S>)
                .put(put_event::<S>)
                .delete(delete_event::<S>),
        )
        .route("/v1/admin/events/{event}/pause", post(pause::<S>))
        .route("/v1/admin/events/{event}/resume", post(resume::<S>))
        .route("/v1/admin/events/{event}/close", post(close::<S>))
        .route(
            "/v1/admin/events/{event}/tickets/{ticket}",
            get(get_ticket::<S>),
        )
        .route(
            "/v1/admin/events/{event}/tickets/{ticket}/complete",
            post(complete::<S>),
        )
        .route(
            "/v1/admin/events/{event}/tickets/{ticket}/revoke",
            post(revoke::<S>),
        )
        .route(
            "/v1/admin/events/{event}/revocations",
            get(revocations::<S>),
        )
        .route("/v1/admin/keys", get(list_keys::<S>))
        .route("/v1/admin/keys/rotate", post(rotate_keys::<S>))
}

/// Checks the bearer token in constant time (for tokens of equal length).
pub(crate) async fn require_admin<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    req: Request,
    next: Next,
) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match (&app.opts.admin_token, given) {
        (Some(want), Some(given)) => bool::from(want.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    };
    if !ok {
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

/// An event's settings, counts and measured admission rate.
#[derive(Debug, Serialize)]
pub struct EventStats {
    /// Settings and counts.
    #[serde(flatten)]
    pub info: EventInfo,
    /// Measured admissions per second; `null` while unknown.
    pub admissions_per_s: Option<f64>,
}

fn stats<S: AdmissionStore>(app: &App<S>, info: EventInfo) -> EventStats {
    let admissions_per_s = app.hub.rate(info.id.as_str());
    EventStats {
        info,
        admissions_per_s,
    }
}

async fn list_events<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
) -> ApiResult<axum::Json<Vec<EventStats>>> {
    let mut out = Vec::new();
    for shard in 0..app.store.shard_count() {
        let ids = app
            .store
            .events(shard)
            .await
            .map_err(|e| ApiError::store("events", e))?;
        for id in ids {
            match app.store.event(&id).await {
                Ok(info) => out.push(stats(&app, info)),
                // Deleted between the two reads.
                Err(dispatcher_admission::AdmissionError::UnknownEvent(_)) => {}
                Err(e) => return Err(ApiError::store("event", e)),
            }
        }
    }
    out.sort_by(|a, b| a.info.id.cmp(&b.info.id));
    Ok(axum::Json(out))
}

async fn get_event<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath(event): ApiPath<String>,
) -> ApiResult<axum::Json<EventStats>> {
    let event = event_id(&event)?;
    let info = app
        .store
        .event(&event)
        .await
        .map_err(|e| ApiError::store("event", e))?;
    Ok(axum::Json(stats(&app, info)))
}

async fn put_event<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath(event): ApiPath<String>,
    ApiJson(settings): ApiJson<EventSettings>,
) -> ApiResult<Response> {
    let event = event_id(&event)?;
    let r = app
        .store
        .configure(&event, &settings)
        .await
        .map_err(|e| ApiError::store("configure", e))?;
    if r.admitted > 0 {
        metrics::counter!(telemetry::PROMOTIONS_TOTAL, "source" => "configure")
            .increment(r.admitted);
    }
    app.remember_settings(&event, &settings);
    tracing::info!(event = %event, created = r.created, admitted = r.admitted, "event configured");
    let info = app
        .store
        .event(&event)
        .await
        .map_err(|e| ApiError::store("event", e))?;
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(stats(&app, info))).into_response())
}

async fn set_state<S: AdmissionStore>(
    app: &App<S>,
    event: &str,
    state: EventState,
) -> ApiResult<axum::Json<EventStats>> {
    let event = event_id(event)?;
    // Only the state changes: a reconfiguration racing with this call is not undone.
    let admitted = app
        .store
        .set_state(&event, state)
        .await
        .map_err(|e| ApiError::store("set_state", e))?;
    if admitted > 0 {
        metrics::counter!(telemetry::PROMOTIONS_TOTAL, "source" => "configure").increment(admitted);
    }
    let info = app
        .store
        .event(&event)
        .await
        .map_err(|e| ApiError::store("event", e))?;
    app.remember_settings(&event, &info.settings);
    tracing::info!(event = %event, state = state.as_str(), admitted, "event state changed");
    Ok(axum::Json(stats(app, info)))
}

async fn pause<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath(event): ApiPath<String>,
) -> ApiResult<axum::Json<EventStats>> {
    set_state(&app, &event, EventState::Paused).await
}

async fn resume<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath(event): ApiPath<String>,
) -> ApiResult<axum::Json<EventStats>> {
    set_state(&app, &event, EventState::Open).await
}

async fn close<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath(event): ApiPath<String>,
) -> ApiResult<axum::Json<EventStats>> {
    set_state(&app, &event, EventState::Closed).await
}

/// `?force=true` deletes an event that still has waiting or admitted tickets.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// Delete even with live tickets (their tokens stay valid until they expire; revoke them first to
    /// list them for the shop).
    #[serde(default)]
    pub force: bool,
}

async fn delete_event<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath(event): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeleteQuery>,
) -> ApiResult<Response> {
    let event = event_id(&event)?;
    let deleted = app
        .store
        .delete_event(&event, q.force)
        .await
        .map_err(|e| ApiError::store("delete_event", e))?;
    app.forget_settings(&event);
    tracing::info!(event = %event, tickets = deleted.tickets, "event deleted");
    Ok((StatusCode::OK, axum::Json(deleted)).into_response())
}

async fn get_ticket<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath((event, ticket)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<TicketView>> {
    let event = event_id(&event)?;
    let ticket = ticket_id(&ticket)?;
    let t = app
        .store
        .ticket(&event, &ticket)
        .await
        .map_err(|e| ApiError::store("ticket", e))?;
    Ok(axum::Json(TicketView::of(
        &event,
        &t,
        &app.tokens,
        app.hub.rate(event.as_str()),
    )))
}

async fn complete<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath((event, ticket)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<ReleaseView>> {
    Ok(axum::Json(
        release_for_admin(&app, &event, &ticket, Release::Complete).await?,
    ))
}

async fn revoke<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath((event, ticket)): ApiPath<(String, String)>,
) -> ApiResult<axum::Json<ReleaseView>> {
    let r = release_for_admin(&app, &event, &ticket, Release::Revoke).await?;
    if r.changed && r.ticket.state == TicketState::Revoked {
        tracing::info!(event = %r.ticket.event, "ticket revoked");
    }
    Ok(axum::Json(r))
}

/// The revocation list: tickets revoked while admitted whose tokens have not yet expired.
#[derive(Debug, Serialize)]
pub struct RevocationList {
    /// The event.
    pub event: String,
    /// Revoked tokens by `jti` (ticket id), with their `exp` in ms.
    pub revoked: Vec<dispatcher_admission::Revocation>,
}

async fn revocations<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
    ApiPath(event): ApiPath<String>,
) -> ApiResult<axum::Json<RevocationList>> {
    let event = event_id(&event)?;
    let revoked = app
        .store
        .revocations(&event)
        .await
        .map_err(|e| ApiError::store("revocations", e))?;
    Ok(axum::Json(RevocationList {
        event: event.to_string(),
        revoked,
    }))
}

/// A signing key's public facts.
#[derive(Debug, Serialize)]
pub struct KeyView {
    /// The key id (the JWT header's `kid`).
    pub kid: String,
    /// From when (ms) it signs new admissions.
    pub active_from_ms: u64,
}

async fn list_keys<S: AdmissionStore>(State(app): State<Arc<App<S>>>) -> axum::Json<Vec<KeyView>> {
    axum::Json(
        app.tokens
            .ring()
            .keys()
            .map(|k| KeyView {
                kid: k.kid.clone(),
                active_from_ms: k.active_from_ms,
            })
            .collect(),
    )
}

async fn rotate_keys<S: AdmissionStore>(
    State(app): State<Arc<App<S>>>,
) -> ApiResult<axum::Json<Vec<KeyView>>> {
    app.tokens.rotate().map_err(|e| {
        ApiError::new(
            StatusCode::CONFLICT,
            "rotation_unavailable",
            format!("cannot rotate keys: {e}"),
        )
    })?;
    Ok(list_keys(State(app)).await)
}

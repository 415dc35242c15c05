//! The admin API (the shop's and the operator's): events (create, configure, pause, resume, close,
//! delete, list, statistics), tickets (read, complete, revoke), the revocation list, and signing keys.
//! Every route requires `Authorization: Bearer <admin token>`, compared in constant time.

use std::sync::Arc;
use std::time::Instant;

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
use crate::extract::{ApiJson, ApiPath, ApiQuery, Peer};
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
    peer: Peer,
    req: Request,
    next: Next,
) -> Response {
    let ip = app.client_ip(peer.0, req.headers());
    let now = Instant::now();
    // An address that failed too often is refused before its token is even compared, so a guesser
    // learns nothing more until the bucket refills.
    if let Err(wait) = app.admin_failures.peek(&ip, now) {
        metrics::counter!(telemetry::ADMIN_AUTH_THROTTLED_TOTAL).increment(1);
        return ApiError::throttled("address", wait).into_response();
    }
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    let ok = match (&app.opts.admin_token, given) {
        (Some(want), Some(given)) => bool::from(want.as_bytes().ct_eq(given.as_bytes())),
        _ => false,
    };
    if !ok {
        // Every failure spends a token of the address's bucket.
        let _ = app.admin_failures.check(&ip, now);
        return ApiError::unauthorized().into_response();
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer <token>` header; the scheme is case-insensitive (RFC 7235).
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim_start().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
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
    app.forget_event_gauges(&event);
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

#[cfg(test)]
mod tests {
    use super::bearer_token;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for v in ["Bearer abc", "bearer abc", "BEARER abc", "BeArEr   abc  "] {
            assert_eq!(bearer_token(v), Some("abc"), "{v:?}");
        }
    }

    #[test]
    fn other_schemes_and_empty_tokens_are_not_bearer_tokens() {
        for v in [
            "Basic abc",
            "Bearerabc",
            "Bearer ",
            "Bearer",
            "",
            "Token abc",
        ] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }
}

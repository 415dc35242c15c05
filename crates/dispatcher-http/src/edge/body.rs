//! The body timeout: a request's body is read whole, within the budget and the size limit, before any
//! handler sees it, so a body slower than its `Content-Length` cannot hold a connection and a task.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body::Body as _;

use crate::error::ApiError;
use crate::telemetry;

/// Reads the body of `req` within `budget` and at most `limit` bytes, then runs `next` with it: 408
/// (connection closed) when the body is too slow, 413 when it is too large.
pub(crate) async fn read_body_within(
    budget: Duration,
    limit: usize,
    req: Request,
    next: Next,
) -> Response {
    if req.body().size_hint().exact() == Some(0) {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    match tokio::time::timeout(budget, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Err(e)) => {
            if is_too_large(&e) {
                ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "payload_too_large",
                    "the request body is too large",
                )
                .into_response()
            } else {
                closing(ApiError::bad_request(
                    "invalid_body",
                    "the request body could not be read",
                ))
            }
        }
        Err(_) => {
            metrics::counter!(telemetry::HTTP_TIMEOUTS_TOTAL, "timeout" => "body").increment(1);
            closing(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} ms",
                    budget.as_millis()
                ),
            ))
        }
    }
}

/// `to_bytes` reports an exceeded limit as an error whose source chain holds `LengthLimitError`.
fn is_too_large(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// An error answer after which the connection closes (the rest of the body is never read).
fn closing(e: ApiError) -> Response {
    let mut resp = e.into_response();
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

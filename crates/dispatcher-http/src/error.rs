//! The API's error answer: an HTTP status, a stable machine-readable code, a message for people, and
//! `Retry-After` where waiting helps. Every error the API returns goes through [`ApiError`].

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use dispatcher_admission::AdmissionError;
use serde::Serialize;

/// An error answer. The JSON body is `{"error": {"code": "...", "message": "..."}}`; codes are stable.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `unknown_ticket`.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Seconds after which a retry may succeed.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Inner<'a>,
}

#[derive(Serialize)]
struct Inner<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    /// An error with the given status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// Adds `Retry-After`.
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// 400 with the given code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 401: the admin API without a valid bearer token.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid admin bearer token is required",
        )
    }

    /// 404 for a path the API does not have.
    pub fn no_route() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// 405.
    pub fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "this route does not take that method",
        )
    }

    /// 429 with `Retry-After`.
    pub fn throttled(scope: &str, retry_after_s: u64) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            format!("too many requests from this {scope}; retry later"),
        )
        .retry_after(retry_after_s)
    }

    /// 503: the store cannot be reached (fail closed).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            message,
        )
        .retry_after(2)
    }
}

impl ApiError {
    /// The answer to a failed store call `op`; a retryable failure is also counted in
    /// `dispatcher_redis_errors_total{op}`.
    pub(crate) fn store(op: &'static str, e: AdmissionError) -> Self {
        if e.is_retryable() {
            metrics::counter!(crate::telemetry::REDIS_ERRORS_TOTAL, "op" => op).increment(1);
        }
        Self::from(e)
    }
}

impl From<AdmissionError> for ApiError {
    fn from(e: AdmissionError) -> Self {
        match e {
            AdmissionError::InvalidInput(m) => Self::bad_request("invalid_input", m),
            AdmissionError::UnknownEvent(ev) => Self::new(
                StatusCode::NOT_FOUND,
                "unknown_event",
                format!("no event {ev}"),
            ),
            AdmissionError::UnknownTicket => Self::new(
                StatusCode::NOT_FOUND,
                "unknown_ticket",
                "no such ticket in this event",
            ),
            AdmissionError::EventClosed(ev) => Self::new(
                StatusCode::CONFLICT,
                "event_closed",
                format!("event {ev} is closed to new joins"),
            ),
            AdmissionError::Rejected(ev) => Self::new(
                StatusCode::FORBIDDEN,
                "joins_rejected",
                format!("event {ev} does not take new joins"),
            ),
            AdmissionError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            AdmissionError::Unavailable(m) => {
                tracing::warn!(error = %m, "store unavailable");
                Self::unavailable("the waiting room's store is unavailable; retry shortly")
            }
            // Never fail-open material: the store is up and answered with an error.
            AdmissionError::Protocol(m) | AdmissionError::Internal(m) => {
                metrics::counter!(crate::telemetry::STORE_INTERNAL_ERRORS_TOTAL).increment(1);
                tracing::error!(error = %m, "store internal error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Inner {
                code: self.code,
                message: &self.message,
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 7235: a 401 names the scheme it wants.
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"dispatcher-admin\""),
            );
        }
        resp
    }
}

/// Result alias of handlers.
pub type ApiResult<T> = Result<T, ApiError>;

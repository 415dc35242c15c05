//! The pages served by the binary, with no external assets: the visitor waiting page (`/wait/{event}`)
//! and the operator dashboard (`/dashboard`).

use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use dispatcher_admission::AdmissionStore;

use crate::App;
use crate::extract::ApiPath;
use crate::visitor::event_id;

const WAITING_HTML: &str = include_str!("../assets/waiting.html");
const DASHBOARD_HTML: &str = include_str!("../assets/dashboard.html");

pub(crate) fn routes<S: AdmissionStore>() -> Router<Arc<App<S>>> {
    Router::new()
        .route("/wait/{event}", get(waiting))
        .route("/dashboard", get(dashboard))
}

fn html(body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline' 'self'; style-src 'unsafe-inline' 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn waiting(ApiPath(event): ApiPath<String>) -> Response {
    match event_id(&event) {
        Ok(_) => html(WAITING_HTML),
        Err(e) => e.into_response(),
    }
}

async fn dashboard() -> Response {
    html(DASHBOARD_HTML)
}

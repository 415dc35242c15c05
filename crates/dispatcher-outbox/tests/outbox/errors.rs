//! Errors say what went wrong: a Postgres error carries the server's code, message and detail (not only
//! tokio-postgres's "db error"), and connecting to a server that never answers ends within the timeout.

use std::time::{Duration, Instant};

use dispatcher_outbox::{OutboxError, db};
use tokio_postgres::types::Type;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_errors_show_the_servers_message_and_code() {
    let pg = testkit::Postgres::start().expect("start a private PostgreSQL");
    let conn = db::connect(&pg.url(), None).await.expect("connect");
    let e = conn
        .q(
            "SELECT now() + make_interval(secs => $1)",
            &[(&1e300f64, Type::FLOAT8)],
        )
        .await
        .expect_err("an interval out of range");
    assert!(e.is_retryable(), "a Postgres error keeps its kind: {e:?}");
    let text = e.to_string();
    assert!(text.contains("22008") || text.contains("22015"), "{text}");
    assert!(text.contains("out of range"), "{text}");
    assert!(!text.ends_with("db error"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_answers_is_given_up_on_within_the_timeout() {
    let port = testkit::silent_server().expect("a silent server");
    let started = Instant::now();
    let e = db::connect_within(
        &format!("postgres://app@127.0.0.1:{port}/db"),
        None,
        false,
        Duration::from_millis(500),
    )
    .await
    .expect_err("no answer");
    assert!(matches!(e, OutboxError::ConnectTimeout(_)), "{e:?}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("500 ms"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

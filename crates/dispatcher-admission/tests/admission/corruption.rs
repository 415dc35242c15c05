//! Redis data changed behind the store's back (a key of the wrong type, a bad counter) and a store that
//! cannot be reached, against a private redis-server: errors are classified by kind (internal, never
//! "unavailable", for an error answer).

use dispatcher_admission::{
    AdmissionError, AdmissionStore, Clock, EventId, EventSettings, RedisConn, RedisStore,
    TicketState, shard_of,
};

use crate::common::{self, T0};

fn ev(s: &str) -> EventId {
    EventId::new(s).expect("valid event id")
}

fn settings(capacity: u64) -> EventSettings {
    EventSettings {
        session_ttl_ms: 10_000,
        abandon_timeout_ms: 60_000,
        ..EventSettings::with_capacity(capacity)
    }
}

/// The name of one of `event`'s keys (`cfg`, `w`, `t`, ...), as the store lays them out.
fn key(store: &RedisStore, event: &EventId, suffix: &str) -> String {
    let o = store.options();
    format!(
        "{}:{{s{}}}:e:{}:{suffix}",
        o.prefix,
        shard_of(event, o.shards),
        event.as_str()
    )
}

async fn redis_cmd<T: redis::FromRedisValue>(store: &RedisStore, args: &[&str]) -> T {
    let mut conn = store.connection();
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

#[track_caller]
fn assert_internal<T: std::fmt::Debug>(what: &str, r: Result<T, AdmissionError>) {
    match r {
        Err(e @ AdmissionError::Internal(_)) => {
            assert!(e.is_internal() && !e.is_retryable(), "{what}: {e:?}");
        }
        other => panic!("{what}: expected an internal error, got {other:?}"),
    }
}

#[tokio::test]
async fn a_key_of_the_wrong_type_is_an_internal_error_not_an_unavailable_store() {
    let store = common::redis(Clock::manual(T0)).await;
    let e = ev("wrongtype");
    store.configure(&e, &settings(1)).await.expect("configure");
    let first = store.join(&e, None).await.expect("join").ticket;
    assert_eq!(first.state, TicketState::Admitted);

    // The waiting line (a zset) is overwritten with a string: every call that touches it gets WRONGTYPE.
    let w = key(&store, &e, "w");
    let () = redis_cmd(&store, &["SET", &w, "not a zset"]).await;
    assert_internal("join", store.join(&e, None).await);
    assert_internal("event", store.event(&e).await);
    assert_internal("tick", store.tick(&e).await);
    // Calls that do not touch the line still work: the store is up.
    assert_eq!(
        store.ticket(&e, &first.id).await.expect("ticket").state,
        TicketState::Admitted
    );

    // The settings hash is overwritten with a list.
    let e2 = ev("wrongtype-cfg");
    store.configure(&e2, &settings(1)).await.expect("configure");
    let cfg = key(&store, &e2, "cfg");
    let _: u64 = redis_cmd(&store, &["DEL", &cfg]).await;
    let _: u64 = redis_cmd(&store, &["RPUSH", &cfg, "x"]).await;
    assert_internal("join over a list", store.join(&e2, None).await);
    assert_internal("event over a list", store.event(&e2).await);
}

#[tokio::test]
async fn a_script_error_is_an_internal_error() {
    let store = common::redis(Clock::manual(T0)).await;
    let e = ev("script-error");
    store.configure(&e, &settings(1)).await.expect("configure");
    let cfg = key(&store, &e, "cfg");
    // A non-integer sequence counter: HINCRBY inside the join function fails ("ERR hash value is not an
    // integer").
    let _: u64 = redis_cmd(&store, &["HSET", &cfg, "seq", "abc"]).await;
    assert_internal("join with a bad counter", store.join(&e, None).await);
    // A non-numeric capacity: a Lua runtime error (arithmetic on nil) in promote.
    let _: u64 = redis_cmd(&store, &["HSET", &cfg, "seq", "0", "cap", "lots"]).await;
    assert_internal("join with a bad capacity", store.join(&e, None).await);
}

#[tokio::test]
async fn an_unreachable_store_is_unavailable_and_retryable() {
    let mut server = testkit::RedisServer::start().expect("spawn redis-server");
    let conn = RedisConn::single(&server.url()).await.expect("connect");
    let store = RedisStore::new(conn, common::redis_opts(Clock::manual(T0))).expect("store");
    let e = ev("unreachable");
    store.configure(&e, &settings(1)).await.expect("configure");
    server.kill().expect("kill redis-server");
    for r in [
        store.join(&e, None).await.map(|_| ()),
        store.event(&e).await.map(|_| ()),
    ] {
        match r {
            Err(e @ AdmissionError::Unavailable(_)) => {
                assert!(e.is_retryable() && !e.is_internal(), "{e:?}");
            }
            other => panic!("expected unavailable, got {other:?}"),
        }
    }
}

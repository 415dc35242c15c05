//! Redis and Postgres go away while rows are produced: the relay backs off, keeps its place, and every
//! row reaches the stream once the server is back, with no attempt counted against any row.

use std::collections::HashSet;
use std::time::Duration;

use dispatcher_outbox::ops::{self, ReplayFilter};

use tokio::task::block_in_place;

use crate::support::{
    RunningRelay, all_settled_and_published, check_stream_against_rows, connect, entries,
    eventually, fresh_db, msg, options, rows, shared_pg,
};

const AGGREGATES: usize = 20;

/// Writes `txs` transactions of `per_tx` rows, one every `pause`, reconnecting when Postgres goes away
/// (a transaction that failed is simply not counted: the table is the truth). Returns how many
/// transactions committed.
async fn produce(url: String, txs: usize, per_tx: usize, pause: Duration) -> usize {
    let mut db: Option<dispatcher_outbox::db::Conn> = None;
    let mut committed = 0;
    let mut seq = 0usize;
    for _ in 0..txs {
        let client = match &mut db {
            Some(c) if !c.is_closed() => c,
            _ => match dispatcher_outbox::db::connect(&url, None).await {
                Ok(c) => db.insert(c),
                Err(_) => {
                    tokio::time::sleep(pause).await;
                    continue;
                }
            },
        };
        let batch: Vec<_> = (0..per_tx)
            .map(|_| {
                seq += 1;
                msg(&format!("agg-{}", seq % AGGREGATES), seq)
            })
            .collect();
        let ok = async {
            let tx = client.transaction().await?;
            dispatcher_outbox::enqueue(&tx, &batch)
                .await
                .map_err(|e| match e {
                    dispatcher_outbox::OutboxError::Postgres(e) => e,
                    other => panic!("enqueue: {other}"),
                })?;
            tx.commit().await
        }
        .await;
        if ok.is_ok() {
            committed += 1;
        }
        tokio::time::sleep(pause).await;
    }
    committed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_mid_run_loses_no_row_and_counts_no_attempt() {
    let url = fresh_db(shared_pg()).await;
    let mut redis = testkit::RedisServer::start_with(testkit::RedisOptions {
        aof: true,
        ..Default::default()
    })
    .expect("start redis with AOF");
    let redis_url = redis.url();
    let stream = "outbox:redis-down";
    let relay = RunningRelay::start(options(&url, &redis_url, stream, "redis-down"));

    let producer = tokio::spawn(produce(url.clone(), 80, 20, Duration::from_millis(25)));
    tokio::time::sleep(Duration::from_millis(500)).await;
    block_in_place(|| redis.kill()).expect("kill redis");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    block_in_place(|| redis.start_again()).expect("start redis again");
    let committed = producer.await.expect("producer");
    assert_eq!(
        committed, 80,
        "Postgres stayed up: every transaction committed"
    );

    let db = connect(&url).await;
    let got = all_settled_and_published(&db, &redis_url, stream).await;
    let state = rows(&db).await;
    assert_eq!(state.len(), 1600);
    for (id, (_, _, status, attempts, err)) in &state {
        assert_eq!(status, "sent", "row {id}");
        assert_eq!(
            *attempts, 0,
            "row {id}: Redis being away is not the row's failure"
        );
        assert!(err.is_none(), "row {id}: {err:?}");
    }
    // Entries Redis wrote before the kill but never acknowledged may come twice, by message id.
    let duplicates = check_stream_against_rows(&got, &state);
    assert_eq!(got.len() - duplicates, 1600);
    assert!(
        !relay.is_finished(),
        "the relay kept running through the outage"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_run_the_relay_recovers_and_delivers_every_row() {
    let mut pg = testkit::Postgres::start().expect("start a private PostgreSQL");
    let url = fresh_db(&pg).await;
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:pg-restart";
    let relay = RunningRelay::start(options(&url, &redis.url(), stream, "pg-restart"));

    let producer = tokio::spawn(produce(url.clone(), 80, 20, Duration::from_millis(25)));
    tokio::time::sleep(Duration::from_millis(600)).await;
    block_in_place(|| pg.restart()).expect("restart postgres");
    let committed = producer.await.expect("producer");
    assert!(committed > 0);

    let db = connect(&url).await;
    let before: i64 = db
        .query_one("SELECT count(*) FROM dispatcher.outbox", &[])
        .await
        .expect("count")
        .get(0);
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let state = rows(&db).await;
    assert_eq!(state.len() as i64, before);
    assert!(
        state.len() >= committed * 20,
        "every committed transaction's rows are in the table"
    );
    for (id, (_, _, status, attempts, err)) in &state {
        assert_eq!(status, "sent", "row {id}");
        assert_eq!(*attempts, 0, "row {id}");
        assert!(err.is_none(), "row {id}: {err:?}");
    }
    let duplicates = check_stream_against_rows(&got, &state);
    assert_eq!(got.len() - duplicates, state.len());
    assert!(
        !relay.is_finished(),
        "the relay kept running through the restart"
    );
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarted_without_persistence_gets_the_function_again_and_replay_sent_refills_it() {
    let url = fresh_db(shared_pg()).await;
    let mut redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:lost";
    let relay = RunningRelay::start(options(&url, &redis.url(), stream, "lost"));
    let mut db = connect(&url).await;
    let batch = |from: usize| {
        (from..from + 50)
            .map(|i| msg(&format!("agg-{}", i % 5), i))
            .collect::<Vec<_>>()
    };
    let first = crate::support::enqueue(&mut db, &batch(0)).await;
    all_settled_and_published(&db, &redis.url(), stream).await;

    // Redis restarts with nothing on disk: the entries and the publish function are gone.
    block_in_place(|| redis.restart()).expect("restart redis");
    let second = crate::support::enqueue(&mut db, &batch(50)).await;
    let got = eventually(
        "the rows written after the restart in the stream",
        || async {
            let got = entries(&redis.url(), stream).await.ok()?;
            let ids: HashSet<i64> = got.iter().map(|e| e.outbox_id).collect();
            let state = rows(&db).await;
            (second.iter().all(|id| ids.contains(id)) && state.values().all(|r| r.2 == "sent"))
                .then_some(got)
        },
    )
    .await;
    assert_eq!(
        got.len(),
        50,
        "only the rows written after the restart are in the new stream"
    );

    // Replaying the lost rows (sent, by id) publishes them again.
    let filter = ReplayFilter {
        sent: true,
        ids: first.clone(),
        ..Default::default()
    };
    let dry = ReplayFilter {
        dry_run: true,
        ..filter.clone()
    };
    assert_eq!(ops::replay(&mut db, &dry).await.expect("dry run"), 50);
    assert_eq!(
        ops::replay(&mut db, &filter).await.expect("replay sent"),
        50
    );
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    let state = rows(&db).await;
    assert_eq!(state.len(), 100);
    assert!(
        state.values().all(|r| r.2 == "sent" && r.3 == 0),
        "{state:?}"
    );
    let ids: HashSet<i64> = got.iter().map(|e| e.outbox_id).collect();
    assert_eq!(
        (got.len(), ids.len()),
        (100, 100),
        "every row once in the new stream"
    );
    assert!(!relay.is_finished());
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_started_before_the_migration_waits_for_it() {
    let pg = shared_pg();
    let admin = connect(&pg.url()).await;
    let name = format!("t_{}_unmigrated", std::process::id());
    admin
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (server, _) = pg
        .url()
        .rsplit_once('/')
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .expect("url");
    let url = format!("{server}/{name}");
    let redis = testkit::RedisServer::start().expect("start redis");
    let stream = "outbox:unmigrated";
    let relay = RunningRelay::start(options(&url, &redis.url(), stream, "early"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !relay.is_finished(),
        "a missing schema is retried, not fatal"
    );

    let mut db = connect(&url).await;
    dispatcher_outbox::schema::migrate(&mut db)
        .await
        .expect("migrate");
    crate::support::enqueue(&mut db, &[msg("m", 1), msg("m", 2)]).await;
    let got = all_settled_and_published(&db, &redis.url(), stream).await;
    assert_eq!(got.len(), 2);
    relay.stop().await;
}

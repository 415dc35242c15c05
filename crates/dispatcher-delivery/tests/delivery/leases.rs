//! Partition leases and fencing (docs/guarantees.md#push-delivery): one holder at a time, renewal and release
//! only by the holder, epochs that only go forward (also across a Redis restart and crash with AOF), and
//! every leader-side write refused by Redis itself when it carries a stale token, changing nothing.

use std::sync::OnceLock;
use std::time::Duration;

use dispatcher_delivery::DeliveryError;
use dispatcher_delivery::store::DeadLetter;
use dispatcher_wire::frame::MessageId;
use proptest::prelude::*;
use testkit::{RedisOptions, RedisServer};

use crate::support::{DEADLINE, GROUP, Setup, new_store, unique, wait_until};

const LONG: u64 = 60_000;

/// Retries `f` until Redis answers (right after a restart the connection is re-established).
async fn retry<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = dispatcher_delivery::Result<T>>,
{
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{what}: Redis did not answer within {DEADLINE:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn pttl(s: &Setup, p: u16) -> i64 {
    let mut conn = s.conn.clone();
    redis::cmd("PTTL")
        .arg(s.keys.lease_key(p))
        .query_async(&mut conn)
        .await
        .expect("PTTL")
}

async fn expire_now(s: &Setup, p: u16) {
    let mut conn = s.conn.clone();
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(s.keys.lease_key(p))
        .arg(1)
        .query_async(&mut conn)
        .await
        .expect("PEXPIRE");
    wait_until(DEADLINE, "the lease key expired", || async {
        s.store.holder(p).await.expect("GET lease").is_none()
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_holder_at_a_time_and_only_the_holder_renews_or_releases() {
    let s = Setup::new(4).await;
    let st = &s.store;
    let p = 2;

    assert_eq!(
        st.acquire(p, "a", LONG).await.expect("acquire"),
        Some(1),
        "the first acquire of a partition gets epoch 1"
    );
    assert_eq!(st.holder(p).await.expect("holder"), Some(("a".into(), 1)));
    let mut conn = s.conn.clone();
    let raw: String = redis::cmd("GET")
        .arg(s.keys.lease_key(p))
        .query_async(&mut conn)
        .await
        .expect("GET");
    assert_eq!(raw, "a|1", "the lease key holds <owner>|<epoch>");
    assert!(
        s.keys.lease_key(p).contains(&format!(
            "dl:{{{}}}:lease",
            s.keys.stream_key(p).trim_matches(['{', '}'])
        )),
        "lease key layout: {}",
        s.keys.lease_key(p)
    );

    // Nobody else gets it while it is held, not even the holder a second time.
    assert_eq!(st.acquire(p, "b", LONG).await.expect("acquire"), None);
    assert_eq!(st.acquire(p, "a", LONG).await.expect("acquire"), None);
    assert_eq!(
        st.holder(p).await.expect("holder"),
        Some(("a".into(), 1)),
        "a refused acquire changes nothing"
    );
    // Other partitions are leased on their own.
    assert_eq!(st.acquire(0, "b", LONG).await.expect("acquire"), Some(1));

    // Renewal: only the exact token of the holder extends the lease.
    let _: i64 = redis::cmd("PEXPIRE")
        .arg(s.keys.lease_key(p))
        .arg(5_000)
        .query_async(&mut conn)
        .await
        .expect("PEXPIRE");
    for other in ["b|1", "a|0", "a|2", "a", "", "a|1|x"] {
        assert!(
            !st.renew(p, other, LONG).await.expect("renew"),
            "{other:?} renewed a lease held by a|1"
        );
    }
    assert!(
        pttl(&s, p).await <= 5_000,
        "a refused renewal left the TTL alone"
    );
    assert!(st.renew(p, "a|1", LONG).await.expect("renew"));
    assert!(
        pttl(&s, p).await > 5_000,
        "the holder's renewal extends the TTL"
    );

    // Release: only by the holder.
    for other in ["b|1", "a|2", "a"] {
        assert!(
            !st.release(p, other,).await.expect("release"),
            "{other:?} released a lease held by a|1"
        );
        assert_eq!(st.holder(p).await.expect("holder"), Some(("a".into(), 1)));
    }
    assert!(st.release(p, "a|1").await.expect("release"));
    assert_eq!(st.holder(p).await.expect("holder"), None);
    assert!(
        !st.release(p, "a|1").await.expect("release"),
        "a second release finds nothing"
    );
    assert!(
        !st.renew(p, "a|1", LONG).await.expect("renew"),
        "a released lease cannot be renewed back to life"
    );

    // The next acquire moves the epoch forward, whoever takes it.
    assert_eq!(st.acquire(p, "b", 300).await.expect("acquire"), Some(2));
    // Let its short TTL run out on its own: the lease is free again and the epoch moves on.
    wait_until(DEADLINE, "the 300 ms lease expired", || async {
        st.holder(p).await.expect("holder").is_none()
    })
    .await;
    assert!(
        !st.renew(p, "b|2", LONG).await.expect("renew"),
        "an expired lease cannot be renewed"
    );
    assert_eq!(st.acquire(p, "c", LONG).await.expect("acquire"), Some(3));
    // The holder's own earlier token is stale too.
    expire_now(&s, p).await;
    assert_eq!(st.acquire(p, "c", LONG).await.expect("acquire"), Some(4));
    assert!(!st.renew(p, "c|3", LONG).await.expect("renew"));
    assert!(st.renew(p, "c|4", LONG).await.expect("renew"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epochs_never_go_backwards_across_a_redis_restart_or_crash_with_aof() {
    let redis = RedisServer::start_with(RedisOptions {
        aof: true,
        ..Default::default()
    })
    .expect("spawn redis-server with AOF");
    let mut s = Setup::on(redis, 2).await;
    let p = 1;
    let st = s.store.clone();
    assert_eq!(st.acquire(p, "a", LONG).await.expect("acquire"), Some(1));
    assert!(st.release(p, "a|1").await.expect("release"));
    assert_eq!(st.acquire(p, "b", LONG).await.expect("acquire"), Some(2));

    // A graceful restart: the epoch counter and the live lease (with its TTL) survive.
    s.redis.restart().expect("restart redis");
    let h = retry("holder after restart", || st.holder(p)).await;
    assert_eq!(h, Some(("b".into(), 2)), "the lease survives a restart");
    assert_eq!(
        retry("acquire after restart", || st.acquire(p, "c", LONG)).await,
        None,
        "the restarted server still refuses a second holder"
    );
    assert!(retry("release", || st.release(p, "b|2")).await);
    assert_eq!(
        retry("acquire", || st.acquire(p, "c", LONG)).await,
        Some(3),
        "after a restart the epoch continues from where it was"
    );
    assert!(retry("release", || st.release(p, "c|3")).await);

    // A crash (SIGKILL) with appendfsync always: every acknowledged INCR of the epoch survives.
    s.redis.kill().expect("kill redis");
    s.redis.start_again().expect("start redis again");
    let e = retry("acquire after a crash", || st.acquire(p, "d", LONG)).await;
    assert_eq!(
        e,
        Some(4),
        "after a crash the epoch continues from where it was"
    );
    // A store connected afresh (a new process) sees the same.
    let fresh = new_store(&s.redis.url(), &s.keys).await;
    assert_eq!(
        fresh.holder(p).await.expect("holder"),
        Some(("d".into(), 4))
    );
    // The other partition's counter is its own and was never used.
    assert_eq!(fresh.acquire(0, "d", LONG).await.expect("acquire"), Some(1));
}

/// Pending entries of the group, `(id, consumer, delivery count)`, in id order.
async fn pending_detail(s: &Setup, p: u16) -> Vec<(String, String, i64)> {
    let mut conn = s.conn.clone();
    let v: redis::Value = redis::cmd("XPENDING")
        .arg(s.keys.stream_key(p))
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(1000)
        .query_async(&mut conn)
        .await
        .expect("XPENDING range");
    let rows: Vec<(String, String, i64, i64)> = redis::from_redis_value(v).expect("XPENDING rows");
    rows.into_iter()
        .map(|(id, c, _idle, n)| (id, c, n))
        .collect()
}

/// Everything a fenced call could change: the pending summary and entries, the group's position, the
/// dead-letter stream's length and the stream's length.
async fn snapshot(s: &Setup, p: u16) -> String {
    let mut conn = s.conn.clone();
    let summary: redis::Value = redis::cmd("XPENDING")
        .arg(s.keys.stream_key(p))
        .arg(GROUP)
        .query_async(&mut conn)
        .await
        .expect("XPENDING");
    let dead: i64 = redis::cmd("XLEN")
        .arg(s.keys.dead_key(p))
        .query_async(&mut conn)
        .await
        .expect("XLEN dead");
    let len: i64 = redis::cmd("XLEN")
        .arg(s.keys.stream_key(p))
        .query_async(&mut conn)
        .await
        .expect("XLEN");
    let group = crate::support::group_info(s, p).await;
    format!(
        "summary {summary:?}\npending {:?}\ndead {dead}\nlen {len}\nlast-delivered {:?} entries-read {:?}",
        pending_detail(s, p).await,
        group.get("last-delivered-id"),
        group.get("entries-read"),
    )
}

fn expect_fenced<T: std::fmt::Debug>(what: &str, token: &str, r: dispatcher_delivery::Result<T>) {
    match r {
        Err(DeliveryError::Fenced(_)) => {}
        other => panic!("{what} with the stale token {token:?} was not fenced: {other:?}"),
    }
}

/// Tries every fenced call with `token`; each must be refused.
async fn all_fenced(s: &Setup, p: u16, token: &str, ids: &[MessageId]) {
    let st = &s.store;
    expect_fenced(
        "read",
        token,
        s.reader().await.read(p, token, "a", 10).await,
    );
    expect_fenced("reclaim", token, st.reclaim(p, token, "a", "-", 10).await);
    expect_fenced("ack", token, st.ack(p, token, ids).await);
    let retries: Vec<(MessageId, u16)> = ids.iter().map(|id| (*id, 9)).collect();
    expect_fenced("retry", token, st.retry(p, token, "a", &retries).await);
    let letters: Vec<DeadLetter<'_>> = ids
        .iter()
        .map(|id| DeadLetter {
            id: *id,
            attempts: 3,
            reason: "stale",
            body: b"x",
        })
        .collect();
    expect_fenced("dead", token, st.dead(p, token, 0, &letters).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fenced_call_with_a_stale_token_is_refused_and_changes_nothing() {
    let s = Setup::new(2).await;
    let st = &s.store;
    let p = 1;
    assert_eq!(st.acquire(p, "a", LONG).await.expect("acquire"), Some(1));
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(s.publish(p, &format!("m{i}")).await);
    }
    // A reads four entries: they are pending under consumer "a".
    let got = s
        .reader()
        .await
        .read(p, "a|1", "a", 4)
        .await
        .expect("read with the live token");
    assert_eq!(
        got.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[..4].to_vec()
    );
    assert_eq!(got[0].body, b"m0");

    // A's lease runs out (a pause); B takes the partition.
    expire_now(&s, p).await;
    assert_eq!(st.acquire(p, "b", LONG).await.expect("acquire"), Some(2));
    let before = snapshot(&s, p).await;
    assert!(before.contains("dead 0"), "{before}");

    // A wakes up: every write it tries is refused by Redis, and nothing changes.
    all_fenced(&s, p, "a|1", &ids[..4]).await;
    // Neither an earlier epoch of the holder's name, a future one, nor a bare owner passes.
    for token in ["b|1", "b|3", "b", "", "b|2 ", "a|2"] {
        all_fenced(&s, p, token, &ids[..4]).await;
    }
    assert_eq!(
        snapshot(&s, p).await,
        before,
        "a fenced call changed the stream, the group or the dead letters"
    );

    // The live token works (so the calls above were refused for their token, not their arguments).
    let (_, reclaimed) = st
        .reclaim(p, "b|2", "b", "-", 10)
        .await
        .expect("reclaim with the live token");
    assert_eq!(reclaimed.len(), 4, "B takes over A's pending entries");
    assert_eq!(
        st.ack(p, "b|2", &ids[..1])
            .await
            .expect("ack with the live token"),
        1
    );
    let n = st
        .dead(
            p,
            "b|2",
            0,
            &[DeadLetter {
                id: ids[1],
                attempts: 2,
                reason: "test",
                body: b"m1",
            }],
        )
        .await
        .expect("dead with the live token");
    assert_eq!(n, 1);
    assert_eq!(s.pending(p).await, 2);
    assert_eq!(s.dead_letters(p).await.len(), 1);

    // B re-acquires after a release: its own previous token is stale now.
    assert!(st.release(p, "b|2").await.expect("release"));
    assert_eq!(st.acquire(p, "b", LONG).await.expect("acquire"), Some(3));
    let before = snapshot(&s, p).await;
    all_fenced(&s, p, "b|2", &ids[2..4]).await;
    // With nobody holding the lease at all, every token is stale.
    expire_now(&s, p).await;
    all_fenced(&s, p, "b|3", &ids[2..4]).await;
    assert_eq!(snapshot(&s, p).await, before);
}

// ---------------------------------------------------------------------------------------------------
// Random sequences of lease operations by three owners against a model.

#[derive(Debug, Clone)]
enum Op {
    Acquire(usize),
    Renew(usize),
    Release(usize),
    /// The holder pauses past its TTL: the lease key expires.
    Expire,
    /// All three try to acquire at the same time.
    Race,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..3usize).prop_map(Op::Acquire),
        2 => (0..3usize).prop_map(Op::Renew),
        2 => (0..3usize).prop_map(Op::Release),
        1 => Just(Op::Expire),
        1 => Just(Op::Race),
    ]
}

const OWNERS: [&str; 3] = ["o0", "o1", "o2"];

struct Shared {
    rt: tokio::runtime::Runtime,
    redis: RedisServer,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| Shared {
        rt: tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime"),
        redis: RedisServer::start().expect("spawn redis-server"),
    })
}

async fn run_ops(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let sh = shared();
    let prefix = unique("prop");
    let keys = dispatcher_delivery::keys::Partitioning::new(
        format!("{prefix}:jobs"),
        1,
        format!("{prefix}:"),
    )
    .expect("keys");
    let st = new_store(&sh.redis.url(), &keys).await;
    let p = 0;
    // The model: the holder's token, each owner's last token, the last epoch handed out.
    let mut holder: Option<String> = None;
    let mut tokens: [Option<String>; 3] = [None, None, None];
    let mut last_epoch = 0u64;
    let mut conn = st.connection();
    let on_acquired = |o: usize,
                       e: u64,
                       holder: &mut Option<String>,
                       tokens: &mut [Option<String>; 3],
                       last_epoch: &mut u64|
     -> Result<(), TestCaseError> {
        prop_assert!(
            e > *last_epoch,
            "epoch {e} handed out after {last_epoch}: epochs must strictly increase"
        );
        *last_epoch = e;
        let t = format!("{}|{e}", OWNERS[o]);
        *holder = Some(t.clone());
        tokens[o] = Some(t);
        Ok(())
    };
    for op in ops {
        match op {
            Op::Acquire(o) => {
                let r = st.acquire(p, OWNERS[o], LONG).await.expect("acquire");
                match (r, &holder) {
                    (Some(e), None) => {
                        on_acquired(o, e, &mut holder, &mut tokens, &mut last_epoch)?;
                    }
                    (None, Some(_)) => {}
                    (r, h) => prop_assert!(false, "acquire by {o} → {r:?} while held by {h:?}"),
                }
            }
            Op::Renew(o) => {
                let t = tokens[o]
                    .clone()
                    .unwrap_or_else(|| format!("{}|0", OWNERS[o]));
                let r = st.renew(p, &t, LONG).await.expect("renew");
                prop_assert_eq!(r, holder.as_deref() == Some(t.as_str()), "renew by {}", t);
            }
            Op::Release(o) => {
                let t = tokens[o]
                    .clone()
                    .unwrap_or_else(|| format!("{}|0", OWNERS[o]));
                let r = st.release(p, &t).await.expect("release");
                prop_assert_eq!(r, holder.as_deref() == Some(t.as_str()), "release by {}", t);
                if r {
                    holder = None;
                }
            }
            Op::Expire => {
                if holder.is_some() {
                    let _: i64 = redis::cmd("PEXPIRE")
                        .arg(keys.lease_key(p))
                        .arg(1)
                        .query_async(&mut conn)
                        .await
                        .expect("PEXPIRE");
                    let mut gone = false;
                    for _ in 0..1000 {
                        if st.holder(p).await.expect("holder").is_none() {
                            gone = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                    prop_assert!(gone, "the lease did not expire");
                    holder = None;
                }
            }
            Op::Race => {
                let (a, b, c) = tokio::join!(
                    st.acquire(p, OWNERS[0], LONG),
                    st.acquire(p, OWNERS[1], LONG),
                    st.acquire(p, OWNERS[2], LONG),
                );
                let got: Vec<(usize, u64)> = [a, b, c]
                    .into_iter()
                    .enumerate()
                    .filter_map(|(i, r)| r.expect("acquire").map(|e| (i, e)))
                    .collect();
                if holder.is_some() {
                    prop_assert!(got.is_empty(), "a held lease was taken in a race: {got:?}");
                } else {
                    prop_assert_eq!(got.len(), 1, "a free lease goes to exactly one of three");
                    let (o, e) = got[0];
                    on_acquired(o, e, &mut holder, &mut tokens, &mut last_epoch)?;
                }
            }
        }
        // Redis agrees with the model: at most one holder, the one the model says.
        let actual = st
            .holder(p)
            .await
            .expect("holder")
            .map(|(o, e)| format!("{o}|{e}"));
        prop_assert_eq!(&actual, &holder);
        // A fenced write succeeds with the current token only.
        for t in tokens.iter().flatten() {
            let r = st.ack(p, t, &[MessageId::new(1, 0)]).await;
            if holder.as_deref() == Some(t.as_str()) {
                prop_assert!(matches!(r, Ok(0)), "the holder's ack failed: {r:?}");
            } else {
                prop_assert!(
                    matches!(r, Err(DeliveryError::Fenced(_))),
                    "ack with the stale token {t} was not fenced: {r:?}"
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 16,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_lease_operations_keep_one_holder_and_increasing_epochs(
        ops in proptest::collection::vec(op(), 1..40)
    ) {
        shared().rt.block_on(run_ops(ops))?;
    }
}

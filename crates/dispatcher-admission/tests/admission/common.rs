//! Fixtures: fresh stores with manual clocks on the in-process store, a private Redis and a Redis Cluster.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use dispatcher_admission::{
    Clock, MemoryStore, MemoryStoreOptions, RedisConn, RedisStore, RedisStoreOptions,
};

pub const T0: u64 = 1_700_000_000_000;

static REDIS: OnceLock<testkit::RedisServer> = OnceLock::new();
static CLUSTER: OnceLock<testkit::RedisCluster> = OnceLock::new();
static PREFIX: AtomicU64 = AtomicU64::new(0);

pub fn redis_url() -> String {
    REDIS
        .get_or_init(|| testkit::RedisServer::start().expect("spawn redis-server"))
        .url()
}

pub fn cluster_nodes() -> Vec<String> {
    CLUSTER
        .get_or_init(|| testkit::RedisCluster::start(3).expect("spawn redis cluster"))
        .nodes()
}

/// A unique key prefix so tests sharing a server never see each other's keys.
pub fn fresh_prefix() -> String {
    format!(
        "t{}-{}",
        std::process::id(),
        PREFIX.fetch_add(1, Ordering::SeqCst)
    )
}

pub fn memory(clock: Clock) -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(MemoryStoreOptions {
        clock,
        ..Default::default()
    }))
}

pub fn redis_opts(clock: Clock) -> RedisStoreOptions {
    RedisStoreOptions {
        prefix: fresh_prefix(),
        clock,
        ..Default::default()
    }
}

pub async fn redis(clock: Clock) -> Arc<RedisStore> {
    let conn = RedisConn::single(&redis_url()).await.expect("connect");
    Arc::new(RedisStore::new(conn, redis_opts(clock)).expect("store"))
}

pub async fn cluster(clock: Clock) -> Arc<RedisStore> {
    let nodes = tokio::task::spawn_blocking(cluster_nodes)
        .await
        .expect("cluster thread");
    let conn = RedisConn::cluster(&nodes).await.expect("connect cluster");
    Arc::new(RedisStore::new(conn, redis_opts(clock)).expect("store"))
}

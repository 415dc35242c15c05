//! The pub/sub ingest bridge: subscribes to a Redis pub/sub channel and appends every message it hears to
//! the source stream (partition chosen by a hash of the payload), where delivery takes over durably.
//!
//! Pub/sub keeps nothing: a message published while the bridge is not subscribed (not started yet,
//! reconnecting after a network or Redis failure) is lost, and the publisher is not told. A message the
//! bridge heard is lost only if the bridge dies before its `XADD` returns. Producers that cannot accept
//! this should `XADD` to the source stream directly.

use futures_util::StreamExt;
use tokio::sync::watch;

use crate::error::{DeliveryError, Result};
use crate::keys::Partitioning;

/// Runs the bridge from `channel` into the partitions of `keys` until `shutdown`; reconnects on failure.
/// Returns how many messages it appended.
pub async fn run(
    redis_url: &str,
    channel: &str,
    keys: Partitioning,
    maxlen: u64,
    mut shutdown: watch::Receiver<bool>,
) -> Result<u64> {
    let client = redis::Client::open(redis_url)
        .map_err(|e| DeliveryError::invalid(format!("bad Redis URL: {e}")))?;
    let mut appended = 0u64;
    loop {
        if *shutdown.borrow() {
            return Ok(appended);
        }
        let r: Result<()> = async {
            let mut conn = client.get_multiplexed_async_connection().await?;
            let mut pubsub = client.get_async_pubsub().await?;
            pubsub.subscribe(channel).await?;
            tracing::info!(channel, "bridge subscribed");
            let mut msgs = pubsub.on_message();
            loop {
                let msg = tokio::select! {
                    m = msgs.next() => m,
                    _ = shutdown.changed() => return Ok(()),
                };
                let Some(msg) = msg else {
                    return Err(DeliveryError::protocol("pub/sub connection closed"));
                };
                let payload: Vec<u8> = msg.get_payload_bytes().to_vec();
                let p = keys.partition_of(&payload);
                let mut cmd = redis::cmd("XADD");
                cmd.arg(keys.stream_key(p));
                if maxlen > 0 {
                    cmd.arg("MAXLEN").arg("~").arg(maxlen);
                }
                cmd.arg("*").arg(crate::store::BODY_FIELD).arg(payload);
                let _: String = cmd.query_async(&mut conn).await?;
                appended += 1;
            }
        }
        .await;
        if let Err(e) = r {
            tracing::warn!(channel, error = %e, "bridge disconnected; messages published meanwhile are lost");
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
                _ = shutdown.changed() => return Ok(appended),
            }
        }
    }
}

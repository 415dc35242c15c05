//! Key names: the source stream of each partition and the keys that live beside it. Every key of a
//! partition shares the stream's hash slot, so each Redis function call touches one slot (Redis Cluster).

use dispatcher_wire::frame::MessageId;

use crate::error::{DeliveryError, Result};

/// Ids of one minute of a partition's messages share one result hash.
pub const BUCKET_MS: u64 = 60_000;

/// How a source stream is split into partitions and where the delivery keys live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partitioning {
    /// The source stream: with one partition, this key itself (the outbox's or the dispatch stream);
    /// with more, see [`Partitioning::stream_key`].
    pub stream: String,
    pub partitions: u16,
    /// Prefix of the delivery's own keys (leases, epochs, dead letters, results).
    pub prefix: String,
}

/// The hash tag Redis Cluster hashes for `key`: the text inside the first `{…}` when non-empty, else the
/// whole key.
pub fn hash_tag(key: &str) -> &str {
    if let Some(open) = key.find('{')
        && let Some(close) = key[open + 1..].find('}')
        && close > 0
    {
        return &key[open + 1..open + 1 + close];
    }
    key
}

impl Partitioning {
    /// Checks the configuration.
    pub fn new(
        stream: impl Into<String>,
        partitions: u16,
        prefix: impl Into<String>,
    ) -> Result<Self> {
        let stream = stream.into();
        if stream.is_empty()
            || stream.len() > 200
            || stream.chars().any(|c| c.is_control() || c == ' ')
        {
            return Err(DeliveryError::invalid(format!(
                "source stream name {stream:?}: 1..=200 characters, no spaces or control characters"
            )));
        }
        if partitions == 0 || partitions > 1024 {
            return Err(DeliveryError::invalid(format!(
                "partitions = {partitions}: must be 1..=1024"
            )));
        }
        Ok(Partitioning {
            stream,
            partitions,
            prefix: prefix.into(),
        })
    }

    /// The stream partition `p` reads: the configured stream itself when there is one partition, else
    /// `{<stream>:<p>}` (its own hash tag, so partitions spread over a cluster).
    pub fn stream_key(&self, p: u16) -> String {
        if self.partitions == 1 {
            self.stream.clone()
        } else {
            format!("{{{}:{}}}", self.stream, p)
        }
    }

    /// The partition a producer should write a message with `key` to (FNV-1a, stable across processes).
    pub fn partition_of(&self, key: &[u8]) -> u16 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in key {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        (h % u64::from(self.partitions)) as u16
    }

    fn aux(&self, p: u16, what: &str) -> String {
        let stream = self.stream_key(p);
        format!("{}dl:{{{}}}:{what}", self.prefix, hash_tag(&stream))
    }

    /// The lease key: `<owner>|<epoch>` with a TTL.
    pub fn lease_key(&self, p: u16) -> String {
        self.aux(p, "lease")
    }

    /// The epoch counter (fencing token), only ever incremented.
    pub fn epoch_key(&self, p: u16) -> String {
        self.aux(p, "epoch")
    }

    /// The dead-letter stream.
    pub fn dead_key(&self, p: u16) -> String {
        self.aux(p, "dead")
    }

    /// The result hash holding message `id`'s claim or result.
    pub fn result_key(&self, p: u16, id: MessageId) -> String {
        self.aux(p, &format!("done:{}", id.ms / BUCKET_MS))
    }

    /// The key listing live dispatcher instances (heartbeats), used for fair shares.
    pub fn members_key(&self) -> String {
        format!("{}dl:members:{}", self.prefix, self.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_tags_follow_redis_rules() {
        assert_eq!(hash_tag("outbox"), "outbox");
        assert_eq!(hash_tag("{jobs:3}"), "jobs:3");
        assert_eq!(hash_tag("a{b}c"), "b");
        assert_eq!(hash_tag("a{}c"), "a{}c");
        assert_eq!(hash_tag("a{b"), "a{b");
    }

    #[test]
    fn keys_of_a_partition_share_its_slot() {
        let one = Partitioning::new("outbox", 1, "app:").expect("valid");
        assert_eq!(one.stream_key(0), "outbox");
        assert_eq!(one.lease_key(0), "app:dl:{outbox}:lease");
        let many = Partitioning::new("jobs", 8, "").expect("valid");
        assert_eq!(many.stream_key(3), "{jobs:3}");
        assert_eq!(hash_tag(&many.lease_key(3)), "jobs:3");
        assert_eq!(hash_tag(&many.dead_key(3)), "jobs:3");
        let id = MessageId {
            ms: 120_001,
            seq: 4,
        };
        assert_eq!(many.result_key(3, id), "dl:{jobs:3}:done:2");
    }

    #[test]
    fn bad_configuration_is_refused() {
        assert!(Partitioning::new("", 1, "").is_err());
        assert!(Partitioning::new("a b", 1, "").is_err());
        assert!(Partitioning::new("s", 0, "").is_err());
        assert!(Partitioning::new("s", 2000, "").is_err());
    }

    #[test]
    fn partition_of_spreads_and_is_stable() {
        let p = Partitioning::new("jobs", 16, "").expect("valid");
        let mut seen = [0u32; 16];
        for i in 0..16_000u32 {
            seen[usize::from(p.partition_of(&i.to_be_bytes()))] += 1;
        }
        assert!(seen.iter().all(|&n| n > 700 && n < 1300), "{seen:?}");
        assert_eq!(p.partition_of(b"user-1"), p.partition_of(b"user-1"));
    }
}

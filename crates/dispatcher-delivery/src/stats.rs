//! Counters and latency histograms of one dispatcher process, and a writer that appends them to a file
//! once a second as JSON lines (what `dispatcher bench delivery` reads from processes it may SIGKILL:
//! at most the last second is lost with the process).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Serializer, V2Serializer};
use tokio::sync::watch;

/// Wall-clock milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn histogram() -> Histogram<u64> {
    #[allow(clippy::unwrap_used)] // constant, valid bounds
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap()
}

/// One process's delivery statistics.
#[derive(Debug)]
pub struct Stats {
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub redelivered: AtomicU64,
    pub dead: AtomicU64,
    /// Deliver frame sent → ack received, microseconds.
    deliver_to_ack: Mutex<Histogram<u64>>,
    /// Stream entry added (its id's time) → ack received, microseconds (ms resolution at the start).
    entry_to_ack: Mutex<Histogram<u64>>,
    events: Mutex<Vec<serde_json::Value>>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            delivered: AtomicU64::new(0),
            acked: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            dead: AtomicU64::new(0),
            deliver_to_ack: Mutex::new(histogram()),
            entry_to_ack: Mutex::new(histogram()),
            events: Mutex::new(Vec::new()),
        }
    }
}

impl Stats {
    /// Adds a partition's latencies (microseconds) gathered since its last call.
    pub fn merge(&self, deliver_to_ack: &Histogram<u64>, entry_to_ack: &Histogram<u64>) {
        if let Ok(mut h) = self.deliver_to_ack.lock() {
            let _ = h.add(deliver_to_ack);
        }
        if let Ok(mut h) = self.entry_to_ack.lock() {
            let _ = h.add(entry_to_ack);
        }
    }

    /// Records an event (lease acquired or lost, first ack of an epoch) with its wall-clock time.
    pub fn event(&self, kind: &str, partition: u16, epoch: u64) {
        if let Ok(mut e) = self.events.lock() {
            e.push(serde_json::json!({
                "kind": kind, "partition": partition, "epoch": epoch, "t_ms": unix_ms()
            }));
        }
    }

    /// A fresh partition-local histogram.
    pub fn local_histogram() -> Histogram<u64> {
        histogram()
    }

    /// The JSON line for the interval since the last call (histograms and events are reset).
    pub fn take_line(&self, node: &str) -> String {
        let encode = |h: &Mutex<Histogram<u64>>| -> String {
            let Ok(mut h) = h.lock() else {
                return String::new();
            };
            let mut buf = Vec::new();
            let ok = V2Serializer::new().serialize(&*h, &mut buf).is_ok();
            h.reset();
            if ok {
                base64::engine::general_purpose::STANDARD.encode(buf)
            } else {
                String::new()
            }
        };
        let events = self
            .events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default();
        serde_json::json!({
            "t_ms": unix_ms(),
            "node": node,
            "delivered": self.delivered.load(Ordering::Relaxed),
            "acked": self.acked.load(Ordering::Relaxed),
            "redelivered": self.redelivered.load(Ordering::Relaxed),
            "dead": self.dead.load(Ordering::Relaxed),
            "deliver_to_ack_us": encode(&self.deliver_to_ack),
            "entry_to_ack_us": encode(&self.entry_to_ack),
            "events": events,
        })
        .to_string()
    }
}

/// Appends a line to `path` every `every` until `shutdown`, and once more at the end.
pub async fn write_periodically(
    stats: std::sync::Arc<Stats>,
    node: String,
    path: PathBuf,
    every: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    let mut tick = tokio::time::interval(every);
    loop {
        let done = tokio::select! {
            _ = tick.tick() => false,
            _ = shutdown.changed() => true,
        };
        let mut line = stats.take_line(&node);
        line.push('\n');
        file.write_all(line.as_bytes())?;
        if done || *shutdown.borrow() {
            return Ok(());
        }
    }
}

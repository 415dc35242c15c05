//! The lease watchdog rule: how long this process may act on a lease, by its own monotonic clock.
//! Pure; no I/O.

use std::time::{Duration, Instant};

/// Lease timing for one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// The TTL Redis puts on the lease at each acquire and renewal.
    pub ttl: Duration,
    /// How long before the TTL could run out this process stops acting on the lease (covers clock-rate
    /// differences and the time between a check and the write it guards).
    pub margin: Duration,
}

impl LeaseTiming {
    /// Checks that the margin leaves room to act.
    pub fn new(ttl: Duration, margin: Duration) -> Option<Self> {
        (ttl > margin && !margin.is_zero()).then_some(LeaseTiming { ttl, margin })
    }

    /// The instant until which a lease acquired or renewed by a call *sent* at `sent` may be used. Redis
    /// starts the TTL when it runs the call, after `sent`, so the lease lives at least until
    /// `sent + ttl`; we stop `margin` earlier.
    pub fn usable_until(&self, sent: Instant) -> Instant {
        sent + (self.ttl - self.margin)
    }

    /// How often to renew: four times per TTL, so that three renewals in a row can fail before the
    /// watchdog stops delivery.
    pub fn renew_every(&self) -> Duration {
        self.ttl / 4
    }
}

/// Whether a lease whose watchdog deadline is `until` may still be acted on at `now`.
pub fn usable(until: Instant, now: Instant) -> bool {
    now < until
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_usable_until_the_margin_before_its_ttl() {
        let t = LeaseTiming::new(Duration::from_millis(1000), Duration::from_millis(200))
            .expect("valid");
        let sent = Instant::now();
        let until = t.usable_until(sent);
        assert!(usable(until, sent + Duration::from_millis(799)));
        assert!(!usable(until, sent + Duration::from_millis(800)));
        assert!(
            !usable(until, sent + Duration::from_secs(30)),
            "a paused process wakes up past it"
        );
        assert_eq!(t.renew_every(), Duration::from_millis(250));
    }

    #[test]
    fn a_margin_that_eats_the_ttl_is_refused() {
        assert!(LeaseTiming::new(Duration::from_millis(100), Duration::from_millis(100)).is_none());
        assert!(LeaseTiming::new(Duration::from_millis(100), Duration::ZERO).is_none());
    }
}

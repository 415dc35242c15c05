//! Retry delays: exponential backoff with jitter, capped. Pure; no I/O.

use std::time::Duration;

/// Exponential backoff: `base · 2^(attempt-1)`, capped at `max`, with "equal jitter" (half fixed, half
/// random) so that rows failing together do not retry together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    /// The delay before retry number `attempt` (1 = the first retry), for a random draw `r` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, r: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(40);
        let full = self
            .base
            .saturating_mul(1u32 << exp.min(31))
            .min(self.max)
            .max(Duration::from_millis(1));
        let half = full / 2;
        half + half.mul_f64(r.clamp(0.0, 1.0))
    }

    /// [`delay`](Self::delay) with a fresh random draw.
    pub fn next(&self, attempt: u32) -> Duration {
        self.delay(attempt, rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_exponentially_with_jitter_and_a_cap() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(10),
        };
        assert_eq!(b.delay(1, 0.0), Duration::from_millis(50));
        assert_eq!(b.delay(1, 1.0), Duration::from_millis(100));
        assert_eq!(b.delay(3, 1.0), Duration::from_millis(400));
        assert_eq!(b.delay(30, 1.0), Duration::from_secs(10), "capped");
        assert_eq!(b.delay(u32::MAX, 0.5), Duration::from_millis(7500));
        let d = b.delay(2, 0.3);
        assert!(d >= Duration::from_millis(100) && d <= Duration::from_millis(200));
    }
}

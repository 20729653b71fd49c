//! Per-connection limits on what one peer may push into the coordinator: a token bucket on
//! frames (checked before any signature is), and a share of the protocol's input queue. Time
//! is an input, in milliseconds, so the bucket is tested without a clock.

/// Frames a connection may send per second, sustained.
pub const FRAMES_PER_S: u64 = 500;
/// Frames a connection may send at once after a quiet spell.
pub const FRAME_BURST: u64 = 1_000;
/// Frames of one connection waiting in the protocol's queue at most (of its 4,096).
pub const MAX_QUEUED_PER_PEER: usize = 256;

/// A token bucket: `rate` tokens a second, at most `burst` held.
#[derive(Debug, Clone)]
pub struct RateLimit {
    rate: u64,
    burst: u64,
    /// Tokens held, in thousandths (so that fractions of a millisecond's refill count).
    milli_tokens: u64,
    last_ms: u64,
}

impl RateLimit {
    pub fn new(rate: u64, burst: u64) -> Self {
        assert!(rate > 0 && burst > 0, "a limit lets something through");
        Self { rate, burst, milli_tokens: burst * 1000, last_ms: 0 }
    }

    /// Whether one more frame may pass at `now_ms` (taking a token if so).
    pub fn allow(&mut self, now_ms: u64) -> bool {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        let refill = elapsed.saturating_mul(self.rate); // thousandths of a token per ms × ms
        self.milli_tokens = self.milli_tokens.saturating_add(refill).min(self.burst * 1000);
        assert!(self.milli_tokens <= self.burst * 1000, "the bucket holds at most its burst");
        match self.milli_tokens >= 1000 {
            true => {
                self.milli_tokens -= 1000;
                true
            }
            false => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_gets_its_burst_then_the_rate_and_a_quiet_peer_its_burst_again() {
        let mut b = RateLimit::new(500, 1_000);
        let passed = (0..5_000).filter(|_| b.allow(0)).count();
        assert_eq!(passed, 1_000, "the burst at once");
        // One second later: 500 more, whatever is asked.
        let passed = (0..5_000).filter(|_| b.allow(1_000)).count();
        assert_eq!(passed, 500, "then the rate");
        // A steady 400 a second (one every 2.5 ms) always passes.
        let mut steady = RateLimit::new(500, 1_000);
        assert!((0..4_000u64).all(|i| steady.allow(10_000 + i * 5 / 2)));
        // A clock that goes back takes nothing and gives nothing.
        let mut back = RateLimit::new(1, 1);
        assert!(back.allow(5_000));
        assert!(!back.allow(1_000));
        assert!(back.allow(6_000));
    }
}

//! A token bucket, with time as an input in milliseconds, so it is tested without a clock. The
//! coordinator daemon limits each connection's frames with it, and the acceptor each source's
//! new connections.

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

impl RateLimit {
    /// Whether the bucket is full at `now_ms` (its source has been quiet long enough to be
    /// forgotten without giving it anything back).
    pub fn is_full(&self, now_ms: u64) -> bool {
        let refill = now_ms.saturating_sub(self.last_ms).saturating_mul(self.rate);
        self.milli_tokens.saturating_add(refill) >= self.burst * 1000
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
        // Full again once quiet for burst / rate.
        let mut quiet = RateLimit::new(10, 20);
        assert!((0..20).all(|_| quiet.allow(0)));
        assert!(!quiet.is_full(1_000) && quiet.is_full(2_000));
    }
}

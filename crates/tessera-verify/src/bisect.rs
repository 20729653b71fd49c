//! The dispute game's search. Two parties agree on the state at index `lo` and disagree on the
//! state at `hi`. The defendant reveals its hash at the midpoint; the challenger, who computed
//! its own, says whether it agrees; the disputed range halves. It ends at the one index `i`
//! (`lo < i <= hi`) whose predecessor both agree on and which they do not: one inner step of a
//! segment, or (over a step's operator prefix chain) one operator, which a referee recomputes.

use crate::VerifyError;

/// Whose move it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// The defendant must reveal its hash at this index.
    Reveal(u64),
    /// Decided: the first disagreeing index.
    Decided(u64),
}

/// A bisection over `lo..=hi`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bisection {
    /// Both agree here.
    lo: u64,
    /// They disagree here.
    hi: u64,
    asked: Option<u64>,
    exchanges: u32,
}

impl Bisection {
    /// Agreement at `lo`, disagreement at `hi` (`lo < hi`).
    pub fn new(lo: u64, hi: u64) -> Result<Self, VerifyError> {
        if lo >= hi {
            return Err(VerifyError::Range { lo, hi });
        }
        Ok(Self { lo, hi, asked: None, exchanges: 0 })
    }

    /// The most questions a range of `n` takes: ⌈log₂ n⌉.
    pub fn max_exchanges(n: u64) -> u32 {
        if n <= 1 {
            0
        } else {
            64 - (n - 1).leading_zeros()
        }
    }

    /// The next move.
    pub fn turn(&mut self) -> Turn {
        if self.hi - self.lo == 1 {
            return Turn::Decided(self.hi);
        }
        let mid = self.lo + (self.hi - self.lo) / 2;
        self.asked = Some(mid);
        Turn::Reveal(mid)
    }

    /// The challenger's verdict on the revealed hash at the asked index.
    pub fn answer(&mut self, agrees: bool) -> Result<(), VerifyError> {
        let mid = self.asked.take().ok_or(VerifyError::NotAsked)?;
        assert!(self.lo < mid && mid < self.hi, "the midpoint lies strictly inside");
        if agrees {
            self.lo = mid;
        } else {
            self.hi = mid;
        }
        self.exchanges += 1;
        Ok(())
    }

    /// Questions answered so far.
    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }
}

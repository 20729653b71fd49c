//! Replay protection that tolerates reordering: frames travel on separate QUIC streams and may
//! overtake each other, so a receiver accepts each sequence number once, within a window
//! below the highest one seen.

use std::collections::BTreeSet;

use crate::Reject;

/// How far below the highest sequence number a frame may still arrive.
pub const SEQ_WINDOW: u64 = 256;

/// The sequence numbers seen from one sender.
#[derive(Clone, Debug, Default)]
pub struct SeqWindow {
    max: Option<u64>,
    seen: BTreeSet<u64>,
}

impl SeqWindow {
    /// Accepts `seq` once; refuses repeats and anything older than the window.
    pub fn check(&mut self, seq: u64) -> Result<(), Reject> {
        if let Some(max) = self.max {
            if seq.saturating_add(SEQ_WINDOW) <= max || self.seen.contains(&seq) {
                return Err(Reject::Replay { seq, last: max });
            }
        }
        let max = self.max.map_or(seq, |m| m.max(seq));
        self.max = Some(max);
        self.seen.insert(seq);
        while self.seen.first().is_some_and(|&s| s.saturating_add(SEQ_WINDOW) <= max) {
            self.seen.pop_first();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reordered_frames_pass_once_and_stale_ones_fail() {
        let mut w = SeqWindow::default();
        w.check(10).unwrap();
        w.check(12).unwrap();
        w.check(11).unwrap(); // overtaken, still fresh
        assert!(w.check(11).is_err(), "a repeat");
        assert!(w.check(10).is_err());
        w.check(10 + SEQ_WINDOW + 5).unwrap();
        assert!(w.check(12).is_err(), "fell out of the window");
        assert!(w.seen.len() <= SEQ_WINDOW as usize);
    }
}

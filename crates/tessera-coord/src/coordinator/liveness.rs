//! Liveness and timing of the coordinator's members: who is silent (scanned only once the
//! earliest last contact can be), each round's deadline from the members' known speeds, and
//! the members that keep missing rounds.

use std::collections::BTreeMap;

use super::*;

impl Coordinator {
    /// A round that started knowing too few of its members' speeds waits the round timeout;
    /// once this round's commits make half of them known, its deadline comes down to the one
    /// those speeds give (never up), so one member that never commits cannot hold it for the
    /// whole timeout.
    pub(super) fn tighten_deadline(&mut self) {
        let Some(open) = self.open.as_ref() else { return };
        if open.deadline_at.saturating_sub(open.started_ms) < self.cfg.round_timeout_ms {
            return; // the deadline was adapted at the start
        }
        if 2 * open.known < open.assignments.len() {
            return; // `deadline` would give the timeout: too few speeds are known
        }
        let peers: Vec<PeerId> = open.assignments.iter().map(|a| a.peer).collect();
        let d = self.deadline(&peers);
        if let Some(o) = self.open.as_mut().filter(|_| d < self.cfg.round_timeout_ms) {
            let before = o.deadline_at;
            o.deadline_at = o.deadline_at.min(o.started_ms.saturating_add(d));
            assert!(o.deadline_at <= before, "a deadline only comes down");
        }
    }

    /// A member was heard from at `t`.
    pub(super) fn heard(&mut self, p: PeerId, t: u64) {
        self.members.insert(p, t);
        self.next_silence = self.next_silence.min(self.silent_after(t));
    }

    /// The first time a member last heard from at `t` counts as silent.
    pub(super) fn silent_after(&self, t: u64) -> u64 {
        t.saturating_add(self.cfg.silence_ms).saturating_add(1)
    }

    /// Drops the members silent at `now_ms`, scanning them only when one can be.
    pub(super) fn drop_silent(&mut self, now_ms: u64) {
        if now_ms < self.next_silence {
            debug_assert!(silent(&self.members, now_ms, self.cfg.silence_ms).is_empty(), "the bound holds");
            return;
        }
        for p in silent(&self.members, now_ms, self.cfg.silence_ms) {
            self.members.remove(&p);
            self.addrs.remove(&p);
            self.event(Event::Left(p));
        }
        let first = self.members.values().min().copied();
        self.next_silence = first.map_or(u64::MAX, |t| self.silent_after(t));
        assert!(self.next_silence > now_ms, "nobody left is silent");
    }

    /// `slack ×` the [`DEADLINE_QUANTILE`] of this round's peers' known round times, clamped;
    /// the configured timeout while fewer than half of them have a known time. One slow or
    /// silent member therefore sets nobody's deadline (and a member that never commits is
    /// dropped after [`MAX_MISSED_ROUNDS`]).
    pub(super) fn deadline(&self, peers: &[PeerId]) -> u64 {
        let mut known: Vec<f64> = peers.iter().filter_map(|p| self.speed_ms.get(p).copied()).collect();
        if known.is_empty() || 2 * known.len() < peers.len() {
            return self.cfg.round_timeout_ms;
        }
        known.sort_by(f64::total_cmp);
        let rank = ((known.len() as f64 * DEADLINE_QUANTILE).ceil() as usize).clamp(1, known.len());
        let d = (known[rank - 1] * self.cfg.deadline_slack) as u64;
        d.clamp(self.cfg.min_round_ms, self.cfg.max_round_ms)
    }

    /// After a close: members assigned a unit that committed nothing count a missed round
    /// (the others start again from 0); one that missed [`MAX_MISSED_ROUNDS`] in a row is
    /// dropped from the run. A member that missed needed more than the `allotted` ms, so its
    /// known round time grows to [`MISS_GROWTH`] × that at least: if most members miss, the
    /// next deadline grows with them (a round that nobody can make in time cannot repeat for
    /// ever), while one member's miss moves the deadline's quantile little.
    pub(super) fn count_missed(&mut self, waiting: &[PeerId], assigned: &[PeerId], allotted: u64) {
        let waiting: std::collections::BTreeSet<&PeerId> = waiting.iter().collect();
        for p in assigned {
            match waiting.contains(p) {
                true => {
                    *self.missed.entry(*p).or_default() += 1;
                    if let Some(s) = self.speed_ms.get_mut(p) {
                        let grown = (s.max(allotted as f64 / self.cfg.deadline_slack) * MISS_GROWTH)
                            .min(self.cfg.max_round_ms as f64);
                        *s = s.max(grown);
                    }
                }
                false => {
                    self.missed.remove(p);
                }
            }
        }
        let dropped: Vec<PeerId> =
            self.missed.iter().filter(|(_, n)| **n >= MAX_MISSED_ROUNDS).map(|(p, _)| *p).collect();
        for p in dropped {
            self.missed.remove(&p);
            if self.members.remove(&p).is_some() {
                self.addrs.remove(&p);
                self.event(Event::Left(p));
            }
        }
        let members = &self.members;
        self.missed.retain(|p, _| members.contains_key(p));
        assert!(self.missed.len() <= self.members.len(), "missed rounds are counted for members only");
    }
}

/// The peers of `seen` (last heard from, by peer) silent for more than `silence_ms`.
pub(super) fn silent(seen: &BTreeMap<PeerId, u64>, now_ms: u64, silence_ms: u64) -> Vec<PeerId> {
    seen.iter().filter(|(_, &t)| now_ms.saturating_sub(t) > silence_ms).map(|(p, _)| *p).collect()
}

//! The dispute game between a trainer (the defendant) and a validator (the challenger) over one
//! segment of inner steps, hosted by a referee (the coordinator or any node) that only compares
//! what both reveal and, at the end, recomputes one operator.
//!
//! 1. **Steps.** Both agree on the state at the segment's start (it is proven against the
//!    trainer's commitment) and disagree at its end. Each turn both reveal their state hash at
//!    the midpoint; the range halves until one step `d` is left (state `d` agreed, `d + 1`
//!    not).
//! 2. **Operators.** Over that step's op trace, both reveal the prefix hash chain value after
//!    the midpoint operator (`tessera_tensor::Trace::prefix_chain`; index 0, before any
//!    operator, is agreed), down to the first operator `j` whose output they disagree on.
//! 3. **Referee.** Both reveal that operator's entry (kernel, input and output hashes). If their
//!    kernels and input hashes agree, the referee fetches the inputs, checks them against those hashes,
//!    recomputes the one operator, and rules for the side whose outputs it reproduces. If the
//!    input hashes differ (the operator read something outside the chain, such as the batch or
//!    the step counter), or the chains agree at the step's end although the states do not,
//!    the referee recomputes the whole step instead.
//!
//! A side that does not answer in time loses ([`Dispute::timeout`]). Exchanges are counted:
//! at most ⌈log₂ k⌉ + ⌈log₂ ops⌉ + 4 for a segment of k steps and a step of `ops` operators.

use crate::{Bisection, Hash32, Turn, VerifyError};

/// Who the referee ruled against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loser {
    Trainer,
    Validator,
    /// Neither side reproduced the referee's result.
    Both,
}

/// The referee's decision, naming what was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ruling {
    pub loser: Loser,
    /// The inner step (from 0 within the round) and operator index decided; `op` is `None`
    /// when the referee recomputed the whole step or a side timed out.
    pub step: u64,
    pub op: Option<u64>,
}

/// What the host must obtain from both sides (or, for `Recompute*`, do itself) next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// Both reveal their local state hash after `step` inner steps.
    State {
        step: u64,
    },
    /// Both reveal their prefix chain value after operator `op` (1-based count) of step `step`.
    Prefix {
        step: u64,
        op: u64,
    },
    /// Both reveal operator `op`'s trace entry hashes (input hashes, output hashes).
    Entry {
        step: u64,
        op: u64,
    },
    /// The referee recomputes operator `op` of `step` from the agreed inputs and calls
    /// [`Dispute::replayed`] with the output hashes it got.
    ReplayOp {
        step: u64,
        op: u64,
    },
    /// The referee recomputes the whole step from the agreed state and calls
    /// [`Dispute::recomputed`] with the state hash it got.
    RecomputeStep {
        step: u64,
    },
    Ruled(Ruling),
}

/// One side's revealed trace entry: the hash of its kernel (operator and static parameters),
/// its input hashes, then its output hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryHashes {
    pub kernel: Hash32,
    pub inputs: Vec<Hash32>,
    pub outputs: Vec<Hash32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    Steps(Bisection),
    /// `confirmed`: both revealed their chain after the step's last operator, and disagree.
    Ops {
        step: u64,
        b: Bisection,
        ends: [Hash32; 2],
        confirmed: bool,
    },
    Entry {
        step: u64,
        op: u64,
        ends: [Hash32; 2],
    },
    Replay {
        step: u64,
        op: u64,
        outputs: [Vec<Hash32>; 2],
    },
    Recompute {
        step: u64,
        ends: [Hash32; 2],
    },
    Ruled(Ruling),
}

/// A dispute over steps `from..to` of one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dispute {
    phase: Phase,
    ops: u64,
    /// The end states both revealed last, by step (for the step phase's last answer).
    last: Option<(u64, [Hash32; 2])>,
    /// The latest state both sides agree on, by step (the referee recomputes from it).
    agreed: (u64, Hash32),
    to: u64,
    exchanges: u32,
}

impl Dispute {
    /// A dispute over the segment `from..to` (state `start` agreed at `from`, disputed at
    /// `to`), each step having `ops` traced operators; `ends` are the two sides' claimed states
    /// at `to`.
    pub fn new(from: u64, to: u64, ops: u64, start: Hash32, ends: [Hash32; 2]) -> Result<Self, VerifyError> {
        if ops == 0 {
            return Err(VerifyError::Range { lo: 0, hi: 0 });
        }
        if ends[0] == ends[1] {
            return Err(VerifyError::Range { lo: from, hi: to }); // nothing is disputed
        }
        Ok(Self {
            phase: Phase::Steps(Bisection::new(from, to)?),
            ops,
            last: Some((to, ends)),
            agreed: (from, start),
            to,
            exchanges: 0,
        })
    }

    /// The most exchanges a segment of `k` steps of `ops` operators can take.
    pub fn max_exchanges(k: u64, ops: u64) -> u32 {
        Bisection::max_exchanges(k) + Bisection::max_exchanges(ops) + 4
    }

    pub fn exchanges(&self) -> u32 {
        self.exchanges
    }

    /// The latest state both sides agree on: its step and hash. Once the game reaches a
    /// step's operators, this is the state that step starts from.
    pub fn agreed(&self) -> (u64, Hash32) {
        self.agreed
    }

    /// While the referee is to replay one operator: the output hashes each side claimed for
    /// it, `[trainer, validator]`.
    pub fn claims(&self) -> Option<[Vec<Hash32>; 2]> {
        match &self.phase {
            Phase::Replay { outputs, .. } => Some(outputs.clone()),
            _ => None,
        }
    }

    /// The ruling, once made.
    pub fn ruling(&self) -> Option<Ruling> {
        match self.phase {
            Phase::Ruled(r) => Some(r),
            _ => None,
        }
    }

    /// What happens next.
    pub fn ask(&mut self) -> Ask {
        match &mut self.phase {
            Phase::Steps(b) => match b.turn() {
                Turn::Reveal(i) => Ask::State { step: i },
                Turn::Decided(i) => {
                    // State i − 1 agreed, state i not: step i − 1 is disputed.
                    let ends =
                        self.last.filter(|l| l.0 == i).map(|l| l.1).expect("the disputed state was revealed");
                    let b = Bisection::new(0, self.ops).expect("ops > 0");
                    assert_eq!(self.agreed.0, i - 1, "the disputed step starts from the agreed state");
                    self.phase = Phase::Ops { step: i - 1, b, ends, confirmed: false };
                    self.ask()
                }
            },
            Phase::Ops { step, confirmed: false, .. } => Ask::Prefix { step: *step, op: self.ops },
            Phase::Ops { step, b, ends, .. } => match b.turn() {
                Turn::Reveal(j) => Ask::Prefix { step: *step, op: j },
                Turn::Decided(j) => {
                    let (step, ends) = (*step, *ends);
                    self.phase = Phase::Entry { step, op: j, ends };
                    Ask::Entry { step, op: j }
                }
            },
            Phase::Entry { step, op, .. } => Ask::Entry { step: *step, op: *op },
            Phase::Replay { step, op, .. } => Ask::ReplayOp { step: *step, op: *op },
            Phase::Recompute { step, .. } => Ask::RecomputeStep { step: *step },
            Phase::Ruled(r) => Ask::Ruled(*r),
        }
    }

    /// Both sides' answers to [`Ask::State`] or [`Ask::Prefix`]: `[trainer, validator]`.
    pub fn revealed(&mut self, hashes: [Hash32; 2]) -> Result<(), VerifyError> {
        let agree = hashes[0] == hashes[1];
        match &mut self.phase {
            Phase::Steps(b) => {
                let asked = match b.turn() {
                    Turn::Reveal(i) => i,
                    Turn::Decided(_) => return Err(VerifyError::NotAsked),
                };
                b.answer(agree)?;
                match agree {
                    true => self.agreed = (asked, hashes[0]),
                    false => self.last = Some((asked, hashes)),
                }
            }
            Phase::Ops { step, ends, confirmed, .. } if !*confirmed => {
                *confirmed = true;
                if agree {
                    // The chains agree after every operator, yet the states differ.
                    let (step, ends) = (*step, *ends);
                    self.phase = Phase::Recompute { step, ends };
                }
            }
            Phase::Ops { b, .. } => {
                if !matches!(b.turn(), Turn::Reveal(_)) {
                    return Err(VerifyError::NotAsked);
                }
                b.answer(agree)?;
            }
            _ => return Err(VerifyError::NotAsked),
        }
        self.exchanges += 1;
        Ok(())
    }

    /// Both sides' answers to [`Ask::Entry`]: `[trainer, validator]`.
    pub fn entries(&mut self, e: [EntryHashes; 2]) -> Result<(), VerifyError> {
        let Phase::Entry { step, op, ends } = self.phase.clone() else { return Err(VerifyError::NotAsked) };
        self.exchanges += 1;
        let [t, v] = e;
        self.phase = if t.inputs == v.inputs && t.kernel == v.kernel {
            Phase::Replay { step, op, outputs: [t.outputs, v.outputs] }
        } else {
            Phase::Recompute { step, ends }
        };
        Ok(())
    }

    /// The referee recomputed the disputed operator: its output hashes.
    pub fn replayed(&mut self, outputs: &[Hash32]) -> Result<Ruling, VerifyError> {
        let Phase::Replay { step, op, outputs: claims } = &self.phase else {
            return Err(VerifyError::NotAsked);
        };
        let ruling =
            Ruling { loser: loser(claims[0] == outputs, claims[1] == outputs), step: *step, op: Some(*op) };
        self.rule(ruling)
    }

    /// The referee recomputed the whole disputed step: the state hash it got.
    pub fn recomputed(&mut self, state: &Hash32) -> Result<Ruling, VerifyError> {
        let Phase::Recompute { step, ends } = &self.phase else { return Err(VerifyError::NotAsked) };
        let ruling = Ruling { loser: loser(&ends[0] == state, &ends[1] == state), step: *step, op: None };
        self.rule(ruling)
    }

    /// `who` did not answer in time: it loses.
    pub fn timeout(&mut self, who: Loser) -> Ruling {
        let step = match &self.phase {
            Phase::Ops { step, .. }
            | Phase::Entry { step, .. }
            | Phase::Replay { step, .. }
            | Phase::Recompute { step, .. } => *step,
            Phase::Steps(_) => self.to.saturating_sub(1),
            Phase::Ruled(r) => return *r,
        };
        let r = Ruling { loser: who, step, op: None };
        self.phase = Phase::Ruled(r);
        r
    }

    fn rule(&mut self, r: Ruling) -> Result<Ruling, VerifyError> {
        self.exchanges += 1;
        self.phase = Phase::Ruled(r);
        Ok(r)
    }
}

fn loser(trainer_right: bool, validator_right: bool) -> Loser {
    match (trainer_right, validator_right) {
        (true, _) => Loser::Validator,
        (false, true) => Loser::Trainer,
        (false, false) => Loser::Both,
    }
}

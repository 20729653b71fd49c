//! A dispute settled in one process, between two sides' claims about one segment of a round:
//! the [`tessera_verify::Dispute`] game hosted over them, the referee recomputing the one
//! operator it comes down to with `tessera-tensor`'s replay. The networked validator will host
//! the same game over messages; this is what the tests and `tessera bench dispute` run.

use tessera_data::{BatchKey, Dataset};
use tessera_model::{Gpt, OptState, Trainer as StepTrainer};
use tessera_tensor::{Tensor, Trace, TraceMode};
use tessera_verify::{Ask, Dispute, EntryHashes, Ruling};

use crate::{CoordError, Hash32, RunSpec};

/// What one side claims about a segment of steps: its local state hash after each step (index
/// 0 is the start), and each step's op trace (prefix chain and entry hashes).
#[derive(Debug, Clone, PartialEq)]
pub struct Claims {
    pub states: Vec<Hash32>,
    pub chains: Vec<Vec<Hash32>>,
    pub entries: Vec<Vec<EntryHashes>>,
}

/// How a dispute was settled, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct Settled {
    pub ruling: Ruling,
    pub exchanges: u32,
    /// Hash bytes both sides revealed, plus the input tensors the referee fetched.
    pub bytes: u64,
    /// Operators the referee recomputed (one, or a whole step's when it had to).
    pub ops_recomputed: u64,
}

impl Claims {
    /// The honest claims for `steps` steps of unit `(round, slot)` from the run's initial
    /// model, with the traces (inputs kept) a referee replays from.
    pub fn honest(
        spec: &RunSpec,
        ds: &Dataset,
        unit: (u64, u64),
        steps: u64,
    ) -> Result<(Self, Vec<Trace>), CoordError> {
        let c = &spec.cfg;
        let model = Gpt { cfg: spec.gpt.clone(), params: spec.template.clone() };
        let mut tr = StepTrainer { opt: OptState::new(&model.params), model, cfg: c.inner_adamw() };
        let (mut states, mut traces) = (vec![tr.state_hash()], Vec::new());
        for s in 0..steps {
            let key = BatchKey { seed: c.seed, round: unit.0, slot: unit.1, step: s };
            let b = ds.train_batch(&key, c.batch, spec.gpt.context)?;
            traces.push(tr.step(&b, TraceMode::HashesAndInputs)?.trace);
            states.push(tr.state_hash());
        }
        let chains = traces.iter().map(Trace::prefix_chain).collect();
        let entries = traces
            .iter()
            .map(|t| {
                let e = |e: &tessera_tensor::TraceEntry| EntryHashes {
                    kernel: crate::kernel_hash(&e.kernel),
                    inputs: e.input_hashes.clone(),
                    outputs: e.output_hashes.clone(),
                };
                t.entries.iter().map(e).collect()
            })
            .collect();
        assert_eq!(traces.len() as u64, steps, "one trace per step");
        Ok((Claims { states, chains, entries }, traces))
    }

    /// These claims from a machine that computed operator `op` (0-based) of `step` wrongly:
    /// that operator's outputs, the chain from it on, and every later state differ (a drill).
    pub fn faulty(&self, step: usize, op: usize) -> Self {
        let mut s = self.clone();
        let flip = |h: &mut Hash32| *h = *blake3::hash(h).as_bytes();
        s.entries[step][op].outputs.iter_mut().for_each(flip);
        s.chains[step][op..].iter_mut().for_each(flip);
        s.states[step + 1..].iter_mut().for_each(flip);
        s
    }
}

/// Settles a dispute over the segment of `traces.len()` steps between a trainer's and a
/// validator's claims; the referee replays from `traces`, checking each input against the
/// hash both sides named.
pub fn settle(trainer: &Claims, validator: &Claims, traces: &[Trace]) -> Result<Settled, CoordError> {
    let k = traces.len() as u64;
    let ops = traces.first().map_or(0, |t| t.entries.len()) as u64;
    let ends = [trainer.states[k as usize], validator.states[k as usize]];
    let mut d = Dispute::new(0, k, ops, trainer.states[0], ends)?;
    let (mut bytes, mut recomputed) = (0u64, 0u64);
    let ruling = loop {
        match d.ask() {
            Ask::State { step } => {
                bytes += 64;
                d.revealed([trainer.states[step as usize], validator.states[step as usize]])?
            }
            Ask::Prefix { step, op } => {
                let (s, j) = (step as usize, op as usize - 1);
                bytes += 64;
                d.revealed([trainer.chains[s][j], validator.chains[s][j]])?
            }
            Ask::Entry { step, op } => {
                let (s, j) = (step as usize, op as usize - 1);
                let (t, v) = (trainer.entries[s][j].clone(), validator.entries[s][j].clone());
                bytes += 32 * (t.inputs.len() + t.outputs.len() + v.inputs.len() + v.outputs.len()) as u64;
                d.entries([t, v])?
            }
            Ask::ReplayOp { step, op } => {
                let e = &traces[step as usize].entries[op as usize - 1];
                let inputs =
                    e.inputs.as_ref().ok_or_else(|| CoordError::State("no recorded inputs".into()))?;
                if !inputs.iter().map(Tensor::hash).eq(e.input_hashes.iter().copied()) {
                    return Err(CoordError::State("fetched inputs do not match their hashes".into()));
                }
                bytes += inputs.iter().map(|t| 4 * t.data().len() as u64).sum::<u64>();
                let refs: Vec<&Tensor> = inputs.iter().collect();
                let out = e.kernel.execute(&refs).map_err(|e| CoordError::State(e.to_string()))?;
                recomputed += 1;
                break d.replayed(&out.iter().map(Tensor::hash).collect::<Vec<_>>())?;
            }
            Ask::RecomputeStep { .. } => {
                return Err(CoordError::State("a whole-step recompute needs the step's start state".into()))
            }
            Ask::Ruled(r) => break r,
        }
    };
    assert!(d.exchanges() <= Dispute::max_exchanges(k, ops), "{} exchanges", d.exchanges());
    Ok(Settled { ruling, exchanges: d.exchanges(), bytes, ops_recomputed: recomputed })
}

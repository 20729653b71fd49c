//! The op trace: an ordered record of every kernel invocation of a step, and single-op replay.
//!
//! Each entry holds the kernel, its input shapes and hashes, and its output shapes and hashes.
//! A prefix hash chain `c_j = H(c_{j−1} ‖ leaf_j)` over the entries' output hashes makes the
//! list bisectable: the dispute game finds the first entry whose chain values differ.

use crate::{Hash, Kernel, Tensor, TensorError};

/// Most entries one trace may hold (a GPT step has a few hundred).
pub const MAX_TRACE_ENTRIES: usize = 1 << 20;

/// How much an [`Exec`] records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceMode {
    /// Record nothing (training).
    Off,
    /// Record kernels, shapes and hashes.
    Hashes,
    /// Also keep each kernel's input tensors, so any entry can be replayed from the trace.
    HashesAndInputs,
}

/// One recorded kernel invocation.
#[derive(Clone, Debug)]
pub struct TraceEntry {
    pub kernel: Kernel,
    pub input_shapes: Vec<Vec<usize>>,
    pub input_hashes: Vec<Hash>,
    pub output_shapes: Vec<Vec<usize>>,
    pub output_hashes: Vec<Hash>,
    /// The inputs themselves, under [`TraceMode::HashesAndInputs`].
    pub inputs: Option<Vec<Tensor>>,
}

impl TraceEntry {
    /// The entry's leaf hash: BLAKE3 over its output hashes in order.
    pub fn leaf(&self) -> Hash {
        let mut h = blake3::Hasher::new();
        for o in &self.output_hashes {
            h.update(o);
        }
        *h.finalize().as_bytes()
    }

    /// Re-runs this one kernel on `inputs` (which must match the recorded input hashes) and
    /// reports whether its outputs hash to the recorded values.
    pub fn replay(&self, inputs: &[Tensor]) -> Result<bool, TensorError> {
        let got: Vec<Hash> = inputs.iter().map(Tensor::hash).collect();
        if got != self.input_hashes {
            return Err(TensorError::ReplayInputs { kernel: self.kernel.name() });
        }
        let refs: Vec<&Tensor> = inputs.iter().collect();
        let out = self.kernel.execute(&refs)?;
        let hashes: Vec<Hash> = out.iter().map(Tensor::hash).collect();
        Ok(hashes == self.output_hashes)
    }

    /// Replays from the inputs kept in the trace.
    pub fn replay_recorded(&self) -> Result<bool, TensorError> {
        let inputs = self.inputs.as_ref().ok_or(TensorError::NoRecordedInputs)?;
        self.replay(inputs)
    }
}

/// An ordered list of kernel invocations.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    pub entries: Vec<TraceEntry>,
}

impl Trace {
    /// The prefix hash chain over the entries' leaves.
    pub fn prefix_chain(&self) -> Vec<Hash> {
        let mut prev = [0u8; 32];
        self.entries
            .iter()
            .map(|e| {
                let mut h = blake3::Hasher::new();
                h.update(&prev);
                h.update(&e.leaf());
                prev = *h.finalize().as_bytes();
                prev
            })
            .collect()
    }
}

/// Runs kernels, recording them when asked.
#[derive(Debug)]
pub struct Exec {
    mode: TraceMode,
    trace: Trace,
}

impl Exec {
    /// An executor with the given trace mode.
    pub fn new(mode: TraceMode) -> Self {
        Self { mode, trace: Trace::default() }
    }

    /// Runs `kernel` on `inputs`, which the caller guarantees are well-shaped: a failure is a
    /// bug in the calling code and panics with the kernel's error.
    pub fn run(&mut self, kernel: Kernel, inputs: &[&Tensor]) -> Vec<Tensor> {
        let out = kernel.execute(inputs).unwrap_or_else(|e| panic!("internal kernel call failed: {e}"));
        if self.mode != TraceMode::Off {
            self.record(kernel, inputs, &out);
        }
        out
    }

    /// Runs a kernel with one output.
    pub fn run1(&mut self, kernel: Kernel, inputs: &[&Tensor]) -> Tensor {
        let mut out = self.run(kernel, inputs);
        assert_eq!(out.len(), 1, "kernel has more than one output");
        out.pop().expect("one output")
    }

    fn record(&mut self, kernel: Kernel, inputs: &[&Tensor], out: &[Tensor]) {
        assert!(self.trace.entries.len() < MAX_TRACE_ENTRIES, "trace too long");
        let keep = self.mode == TraceMode::HashesAndInputs;
        self.trace.entries.push(TraceEntry {
            kernel,
            input_shapes: inputs.iter().map(|t| t.shape().to_vec()).collect(),
            input_hashes: inputs.iter().map(|t| t.hash()).collect(),
            output_shapes: out.iter().map(|t| t.shape().to_vec()).collect(),
            output_hashes: out.iter().map(Tensor::hash).collect(),
            inputs: keep.then(|| inputs.iter().map(|&t| t.clone()).collect()),
        });
    }

    /// The trace recorded so far, leaving an empty one.
    pub fn take_trace(&mut self) -> Trace {
        std::mem::take(&mut self.trace)
    }
}

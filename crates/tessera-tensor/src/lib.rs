//! # tessera-tensor
//!
//! **Role.** Deterministic f32 CPU tensors for tessera: the kernels a GPT and an MLP need
//! (forward and backward), reverse-mode autograd over a tape, the per-op trace of a training
//! step and single-op replay, and a counter-based RNG.
//!
//! **Invariants.**
//! - The same kernel on the same inputs gives bit-identical outputs for any thread count and on
//!   every SIMD path (scalar, AVX2, AVX-512): every reduction has one order fixed by the shapes alone;
//!   threads split only independent outputs, never one sum.
//! - FMA policy: every multiply-accumulate of a matrix product is one fused multiply-add
//!   (hardware FMA on SIMD paths, `f32::mul_add` on the scalar path: both correctly rounded).
//!   Nothing else is fused; other sums use [`sum_fixed`]/[`dot_fixed`] with plain operations.
//! - Transcendentals come from `libm`, never the platform's math library, except `exp` in
//!   elementwise hot loops, which is [`math::exp`]: built from IEEE basic operations only,
//!   so equally portable, and vectorizable.
//! - The elementwise and row loops may run compiled for AVX2 ([`simd`]'s `wide`); they use only
//!   exactly rounded operations, so any lane width gives the same bits.
//! - Tensors hash as BLAKE3 of dtype tag, rank, dims and little-endian data.
//! - The one exception to the first rule is [`relaxed`], a benchmark-only switch that lets
//!   threads split a matmul's sum; once it has been on, hashing tensor data panics, so its
//!   results can never reach a state hash.
//!
//! **Must not.** Do I/O, read clocks or OS randomness, or depend on anything above it.

#![cfg_attr(not(test), deny(clippy::unwrap_used))]

mod kernel;
pub mod math;
mod matmul;
mod ops_basic;
mod ops_nn;
mod ops_optim;
pub mod relaxed;
pub mod rng;
pub mod simd;
mod tape;
mod tensor;
mod trace;

pub use kernel::{Kernel, MAX_KERNEL_INPUTS};
pub use matmul::{matmul, matmul_batched, matmul_reference, MatSpec};
pub use ops_basic::{dot_fixed, sum_fixed};
pub use ops_nn::check_ids;
pub use ops_optim::AdamWParams;
pub use tape::{Grads, Graph, Var};
pub use tensor::{hash_f32s, hex, unhex32, Hash, Tensor, MAX_DIMS};
pub use trace::{Exec, Trace, TraceEntry, TraceMode, MAX_TRACE_ENTRIES};

/// Everything that can go wrong in this crate. All of it comes from bad input; broken internal
/// invariants panic instead.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum TensorError {
    #[error("shape {shape:?} does not hold {len} values")]
    DataLength { shape: Vec<usize>, len: usize },
    #[error("shape {0:?} has too many elements")]
    TooLarge(Vec<usize>),
    #[error("{0} dimensions is more than the {MAX_DIMS} allowed")]
    TooManyDims(usize),
    #[error("cannot reshape {from:?} to {to:?}")]
    Reshape { from: Vec<usize>, to: Vec<usize> },
    #[error("{kernel}: bad shapes: {detail}")]
    Shape { kernel: &'static str, detail: String },
    #[error("{kernel}: got {got} inputs")]
    Arity { kernel: &'static str, got: usize },
    #[error("{kernel}: index {value} is not an integer in 0..{limit}")]
    BadIndex { kernel: &'static str, value: f32, limit: usize },
    #[error("{kernel}: bad parameter: {detail}")]
    BadParam { kernel: &'static str, detail: String },
    #[error("unknown SIMD path {0:?} (known: scalar, avx2, avx512)")]
    UnknownSimdPath(String),
    #[error("this CPU cannot run the {0} path")]
    UnsupportedSimdPath(&'static str),
    #[error("replay of {kernel}: the inputs do not match the recorded hashes")]
    ReplayInputs { kernel: &'static str },
    #[error("the trace kept no inputs for replay")]
    NoRecordedInputs,
}

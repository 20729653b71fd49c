//! The non-deterministic fast path, for measuring what determinism costs. Benchmark only.
//!
//! When switched on, [`crate::matmul`] may split one product's reduction over `k` across
//! threads: each thread sums its own depth blocks, and the partial products are added at the
//! end. That is what a throughput-first engine does, and it makes the bits depend on the
//! thread count. Nothing in the protocol may use it, so the switch is sticky: once it has been
//! on in a process, hashing any tensor data panics ([`crate::hash_f32s`]), and no state hash,
//! commit or trace can come out of that process.

use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);
static EVER: AtomicBool = AtomicBool::new(false);

/// Switches the fast path on or off for the whole process (`tessera bench … --nondeterministic`).
pub fn set_enabled(on: bool) {
    if on {
        EVER.store(true, Ordering::SeqCst);
    }
    ON.store(on, Ordering::SeqCst);
}

/// Whether kernels may take the fast path now.
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Whether the fast path was ever on in this process.
pub fn was_enabled() -> bool {
    EVER.load(Ordering::Relaxed)
}

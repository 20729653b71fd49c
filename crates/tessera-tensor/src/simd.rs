//! Choice of the SIMD code path, detected at run time and forceable for tests.
//!
//! Every path computes the same bits: SIMD only spreads *independent* outputs across lanes, and
//! every multiply-accumulate of a matmul is one correctly rounded fused multiply-add.

use std::sync::atomic::{AtomicU8, Ordering};

use crate::TensorError;

/// A family of kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdPath {
    /// Portable Rust, fused multiply-add through `f32::mul_add` (exactly rounded everywhere).
    Scalar,
    /// x86-64 AVX2 + FMA3 (8 lanes).
    Avx2,
    /// x86-64 AVX-512F (16 lanes, fused multiply-add).
    Avx512,
}

impl SimdPath {
    /// All paths, in order of preference from worst to best.
    pub const ALL: [SimdPath; 3] = [SimdPath::Scalar, SimdPath::Avx2, SimdPath::Avx512];

    /// Lower-case name, as accepted by [`SimdPath::parse`].
    pub fn name(self) -> &'static str {
        match self {
            SimdPath::Scalar => "scalar",
            SimdPath::Avx2 => "avx2",
            SimdPath::Avx512 => "avx512",
        }
    }

    /// Parses `scalar`, `avx2` or `avx512`.
    pub fn parse(s: &str) -> Result<Self, TensorError> {
        Self::ALL
            .into_iter()
            .find(|p| p.name() == s)
            .ok_or_else(|| TensorError::UnknownSimdPath(s.to_string()))
    }

    /// Whether this CPU can run the path.
    pub fn supported(self) -> bool {
        match self {
            SimdPath::Scalar => true,
            SimdPath::Avx2 => avx2_supported(),
            SimdPath::Avx512 => avx512_supported(),
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn avx2_supported() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2_supported() -> bool {
    false
}

#[cfg(target_arch = "x86_64")]
fn avx512_supported() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512_supported() -> bool {
    false
}

/// 0 = not forced; otherwise 1 + index into `SimdPath::ALL`.
static FORCED: AtomicU8 = AtomicU8::new(0);

/// Forces every kernel onto one path (`None` returns to automatic choice).
///
/// This is process-wide. Tests that force a path must not run beside tests that depend on the
/// automatic choice in the same process; results are identical either way, only speed differs.
pub fn force_path(path: Option<SimdPath>) -> Result<(), TensorError> {
    let code = match path {
        None => 0,
        Some(p) if !p.supported() => return Err(TensorError::UnsupportedSimdPath(p.name())),
        Some(p) => 1 + SimdPath::ALL.iter().position(|&q| q == p).unwrap_or(0) as u8,
    };
    FORCED.store(code, Ordering::SeqCst);
    Ok(())
}

/// The path kernels use now: the forced one, else the best this CPU supports.
pub fn active_path() -> SimdPath {
    match FORCED.load(Ordering::Relaxed) {
        0 => best_path(),
        c => SimdPath::ALL[(c - 1) as usize],
    }
}

/// Runs `f` compiled with AVX2 enabled when the active path is AVX2 or AVX-512, else as built.
///
/// For the elementwise and row kernels (and the update codecs' and aggregation's loops in
/// `tessera-sync`), whose loops the compiler vectorizes on its own: a
/// baseline x86-64 build has only 4-lane SSE2. This changes no bit: those loops are written
/// with `+ − × /`, `sqrt`, comparisons and bit operations only, which are exactly rounded in
/// any lane width, and Rust never contracts a multiply and an add into an FMA (the `fma`
/// feature is not enabled here in any case).
#[inline(always)]
pub fn wide<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    if active_path() != SimdPath::Scalar && avx2_supported() {
        // SAFETY: the CPU has AVX2 (checked just above).
        return unsafe { run_avx2(f) };
    }
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// The best path this CPU supports.
pub fn best_path() -> SimdPath {
    if SimdPath::Avx512.supported() {
        SimdPath::Avx512
    } else if SimdPath::Avx2.supported() {
        SimdPath::Avx2
    } else {
        SimdPath::Scalar
    }
}

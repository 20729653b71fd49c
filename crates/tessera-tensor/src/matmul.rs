//! Packed, cache-blocked matrix multiply with a fixed reduction order.
//!
//! Every output element is computed as one chain `acc = fma(A[i,p], B[p,j], acc)` for
//! `p = 0, 1, …, k-1`, starting from `+0.0`. Blocking over `k` stores the running `acc` in `C`
//! between blocks, which does not change a bit; threads split rows of `C` (or batch entries),
//! never one sum. So the result is the same for any thread count and on every SIMD path.

use std::cell::RefCell;
use std::ops::Range;

use rayon::prelude::*;

use crate::simd::{active_path, SimdPath};

/// Rows of the register tile.
const MR: usize = 6;
/// Columns of the register tile (two AVX2 vectors).
const NR: usize = 16;
/// Depth of one packed block (the k-blocking).
const KC: usize = 256;
/// Rows of C handled by one task (a multiple of `MR`).
const MC: usize = 72;
/// Columns of one packed B block (a multiple of `NR`).
const NC: usize = 1024;
/// Panels of B one packing task fills (stored `[k, n]`).
const PACK_B_GROUP: usize = 8;

/// Shapes and storage of one product `C[m,n] = op(A)·op(B)`.
///
/// `A` is stored `[m,k]` row-major, or `[k,m]` when `ta`; `B` is stored `[k,n]`, or `[n,k]`
/// when `tb`. `C` is always `[m,n]` row-major and is overwritten.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatSpec {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub ta: bool,
    pub tb: bool,
}

impl MatSpec {
    #[inline]
    fn a_at(&self, a: &[f32], i: usize, p: usize) -> f32 {
        if self.ta {
            a[p * self.m + i]
        } else {
            a[i * self.k + p]
        }
    }

    #[inline]
    fn b_at(&self, b: &[f32], p: usize, j: usize) -> f32 {
        if self.tb {
            b[j * self.k + p]
        } else {
            b[p * self.n + j]
        }
    }
}

/// `C = op(A)·op(B)` for one matrix; rows of `C` are spread over the current rayon pool.
pub fn matmul(spec: &MatSpec, a: &[f32], b: &[f32], c: &mut [f32]) {
    gemm(spec, a, b, c, true);
}

/// `batch` independent products over contiguous slices; batch entries run in parallel.
pub fn matmul_batched(spec: &MatSpec, batch: usize, a: &[f32], b: &[f32], c: &mut [f32]) {
    let (sa, sb, sc) = (spec.m * spec.k, spec.k * spec.n, spec.m * spec.n);
    assert!(a.len() == batch * sa && b.len() == batch * sb && c.len() == batch * sc);
    if batch == 1 || sc == 0 {
        return gemm(spec, a, b, c, true);
    }
    c.par_chunks_mut(sc).enumerate().for_each(|(t, ct)| {
        gemm(spec, &a[t * sa..(t + 1) * sa], &b[t * sb..(t + 1) * sb], ct, false);
    });
}

/// Straightforward reference with the same reduction order (used by tests).
pub fn matmul_reference(spec: &MatSpec, a: &[f32], b: &[f32]) -> Vec<f32> {
    let mut c = vec![0.0f32; spec.m * spec.n];
    for i in 0..spec.m {
        for j in 0..spec.n {
            let mut acc = 0.0f32;
            for p in 0..spec.k {
                acc = spec.a_at(a, i, p).mul_add(spec.b_at(b, p, j), acc);
            }
            c[i * spec.n + j] = acc;
        }
    }
    c
}

thread_local! {
    /// Packed panels of A, reused by every product this thread runs (no allocation, no fresh
    /// pages per call).
    static PACK_A: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// Packed panels of B, reused the same way.
    static PACK_B: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with this thread's reusable buffer, or a fresh one if it is already in use (a
/// product started from inside another on the same thread, which rayon's work stealing allows).
fn with_buffer<R>(
    key: &'static std::thread::LocalKey<RefCell<Vec<f32>>>,
    f: impl FnOnce(&mut Vec<f32>) -> R,
) -> R {
    key.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

/// Grows `buf` to at least `len` values without clearing what it holds: the packers write every
/// value of the panels they fill, padding included.
fn ensure_len(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

fn gemm(spec: &MatSpec, a: &[f32], b: &[f32], c: &mut [f32], parallel: bool) {
    let MatSpec { m, n, k, .. } = *spec;
    assert!(a.len() == m * k && b.len() == k * n && c.len() == m * n, "gemm operand sizes");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        c.fill(0.0);
        return;
    }
    with_buffer(&PACK_B, |bp| gemm_packed(spec, a, b, c, parallel, bp));
}

fn gemm_packed(spec: &MatSpec, a: &[f32], b: &[f32], c: &mut [f32], parallel: bool, bp: &mut Vec<f32>) {
    let MatSpec { m, n, k, .. } = *spec;
    let path = active_path();
    // The depth blocks; every column block of B is packed for all of them at once, so that
    // each band of C rows runs all its depth blocks while it stays in cache.
    let depth_blocks: Vec<(usize, usize)> = (0..k).step_by(KC).map(|pc| (pc, KC.min(k - pc))).collect();
    let mc = if parallel { balanced_mc(m) } else { MC };
    for jc in (0..n).step_by(NC) {
        let nc = NC.min(n - jc);
        let panels = nc.div_ceil(NR);
        ensure_len(bp, panels * k * NR);
        let mut rest = &mut bp[..panels * k * NR];
        let mut parts = Vec::with_capacity(depth_blocks.len());
        for &(pc, kc) in &depth_blocks {
            let (head, tail) = rest.split_at_mut(panels * kc * NR);
            parts.push((pc, kc, head));
            rest = tail;
        }
        if parallel {
            parts.par_iter_mut().for_each(|(pc, kc, dst)| pack_b(spec, b, dst, (*pc, *kc, jc, nc), true));
        } else {
            parts.iter_mut().for_each(|(pc, kc, dst)| pack_b(spec, b, dst, (*pc, *kc, jc, nc), false));
        }
        let packed = Packed { s: spec, a, bp: &bp[..], jc, nc, path };
        if parallel && crate::relaxed::enabled() && rayon::current_num_threads() > 1 && depth_blocks.len() > 1
        {
            split_k(&packed, c, &depth_blocks);
            continue;
        }
        let all = 0..depth_blocks.len();
        let run = |(t, cb): (usize, &mut [f32])| {
            with_buffer(&PACK_A, |ap| packed.band(&depth_blocks, all.clone(), t * mc, cb, ap))
        };
        if parallel && m > mc {
            c.par_chunks_mut(mc * n).enumerate().for_each(run);
        } else {
            c.chunks_mut(mc * n).enumerate().for_each(run);
        }
    }
}

/// One column block of B, packed for every depth block, with the product it belongs to.
struct Packed<'a> {
    s: &'a MatSpec,
    a: &'a [f32],
    bp: &'a [f32],
    jc: usize,
    nc: usize,
    path: SimdPath,
}

impl Packed<'_> {
    /// Runs the depth blocks `range` of `depth` on the band of C rows from `ic`: the range's
    /// first block overwrites the band, the others add to it in order.
    fn band(
        &self,
        depth: &[(usize, usize)],
        range: Range<usize>,
        ic: usize,
        cb: &mut [f32],
        ap: &mut Vec<f32>,
    ) {
        assert!(range.start < range.end && range.end <= depth.len(), "a non-empty range of depth blocks");
        let width = self.nc.div_ceil(NR) * NR;
        let mut off: usize = depth[..range.start].iter().map(|&(_, kc)| width * kc).sum();
        for d in range.clone() {
            let (pc, kc) = depth[d];
            let blk = Block { pc, kc, jc: self.jc, nc: self.nc, first: d == range.start, path: self.path };
            blk.rows(self.s, self.a, &self.bp[off..off + width * kc], ic, cb, ap);
            off += width * kc;
        }
    }
}

/// The non-deterministic fast path ([`crate::relaxed`], benchmark only) for one column block:
/// the depth blocks are split into one contiguous group per thread, each group sums into its
/// own partial product (group 0 into `c` itself), and the partials are then added into `c`.
/// The bits depend on the thread count.
fn split_k(packed: &Packed, c: &mut [f32], depth: &[(usize, usize)]) {
    let ((m, n), (jc, nc)) = ((packed.s.m, packed.s.n), (packed.jc, packed.nc));
    let per = depth.len().div_ceil(rayon::current_num_threads());
    let groups = depth.len().div_ceil(per);
    assert!(groups > 1 && groups * per >= depth.len(), "split_k needs two groups");
    let mut partial: Vec<Vec<f32>> = (1..groups).map(|_| vec![0.0; m * n]).collect();
    {
        let mut outs: Vec<&mut [f32]> =
            std::iter::once(&mut *c).chain(partial.iter_mut().map(|p| &mut p[..])).collect();
        outs.par_iter_mut().enumerate().for_each(|(g, out)| {
            let range = g * per..(g * per + per).min(depth.len());
            with_buffer(&PACK_A, |ap| {
                for (t, cb) in out.chunks_mut(MC * n).enumerate() {
                    packed.band(depth, range.clone(), t * MC, cb, ap);
                }
            })
        });
    }
    c.par_chunks_mut(n).enumerate().for_each(|(i, row)| {
        for p in &partial {
            let src = &p[i * n + jc..i * n + jc + nc];
            row[jc..jc + nc].iter_mut().zip(src).for_each(|(o, &v)| *o += v);
        }
    });
}

/// Rows per task: about `MC`, but sized so the number of bands is a multiple of the thread
/// count (no thread idles on the last band). Blocking never changes the bits of the result.
fn balanced_mc(m: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let bands = m.div_ceil(MC).div_ceil(threads) * threads;
    m.div_ceil(bands).div_ceil(MR) * MR
}

/// One (k-block, column-block) step of the product, applied to a band of rows of C.
struct Block {
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
    first: bool,
    path: SimdPath,
}

impl Block {
    fn rows(&self, s: &MatSpec, a: &[f32], bp: &[f32], ic: usize, cb: &mut [f32], ap: &mut Vec<f32>) {
        let n = s.n;
        let mc = cb.len() / n;
        pack_a(s, a, ap, ic, mc, self.pc, self.kc);
        let kc = self.kc;
        for (jp, j0) in (0..self.nc).step_by(NR).enumerate() {
            let nr = NR.min(self.nc - j0);
            let bpan = &bp[jp * kc * NR..(jp + 1) * kc * NR];
            for (ip, i0) in (0..mc).step_by(MR).enumerate() {
                let mr = MR.min(mc - i0);
                let apan = &ap[ip * kc * MR..(ip + 1) * kc * MR];
                let off = i0 * n + self.jc + j0;
                self.tile(apan, bpan, &mut cb[off..], n, mr, nr);
            }
        }
    }

    /// Multiplies one packed MR×kc panel by one packed kc×NR panel into C (valid part mr×nr).
    /// Full tiles are updated in place; edge tiles go through a small buffer.
    fn tile(&self, ap: &[f32], bp: &[f32], c: &mut [f32], ldc: usize, mr: usize, nr: usize) {
        if mr == MR && nr == NR {
            assert!(c.len() >= (MR - 1) * ldc + NR);
            return self.kernel(ap, bp, c.as_mut_ptr(), ldc);
        }
        let mut t = [0.0f32; MR * NR];
        if !self.first {
            for i in 0..mr {
                t[i * NR..i * NR + nr].copy_from_slice(&c[i * ldc..i * ldc + nr]);
            }
        }
        self.kernel(ap, bp, t.as_mut_ptr(), NR);
        for i in 0..mr {
            c[i * ldc..i * ldc + nr].copy_from_slice(&t[i * NR..i * NR + nr]);
        }
    }

    /// Runs the micro-kernel of the active path on an MR×NR tile at `c` with row stride `ldc`.
    fn kernel(&self, ap: &[f32], bp: &[f32], c: *mut f32, ldc: usize) {
        assert!(ap.len() >= self.kc * MR && bp.len() >= self.kc * NR);
        match self.path {
            // SAFETY (both arms): the panels hold kc·MR and kc·NR values (asserted above) and
            // `c` addresses MR rows of NR values at stride ldc (asserted or a local buffer).
            SimdPath::Scalar => unsafe { kernel_scalar(self.kc, ap, bp, c, ldc, self.first) },
            SimdPath::Avx2 => {
                #[cfg(target_arch = "x86_64")]
                // Avx2 is only active when the CPU has AVX2 and FMA (checked in simd.rs).
                unsafe {
                    kernel_avx2(self.kc, ap.as_ptr(), bp.as_ptr(), c, ldc, self.first)
                }
                #[cfg(not(target_arch = "x86_64"))]
                unsafe {
                    kernel_scalar(self.kc, ap, bp, c, ldc, self.first)
                }
            }
            SimdPath::Avx512 => {
                #[cfg(target_arch = "x86_64")]
                // Avx512 is only active when the CPU has AVX-512F (checked in simd.rs).
                unsafe {
                    kernel_avx512(self.kc, ap.as_ptr(), bp.as_ptr(), c, ldc, self.first)
                }
                #[cfg(not(target_arch = "x86_64"))]
                unsafe {
                    kernel_scalar(self.kc, ap, bp, c, ldc, self.first)
                }
            }
        }
    }
}

/// Packs rows `ic..ic+mc`, depths `pc..pc+kc` of op(A) into MR-row panels, zero-padded.
fn pack_a(s: &MatSpec, a: &[f32], ap: &mut Vec<f32>, ic: usize, mc: usize, pc: usize, kc: usize) {
    let panels = mc.div_ceil(MR);
    ensure_len(ap, panels * kc * MR);
    if s.ta {
        // A stored [k, m]: each depth holds a panel's MR rows contiguously. A full panel copies
        // a fixed MR values per depth (register moves; a copy of run-time length is a memmove
        // call per depth, which was most of this packing's time). Walking the depths once for
        // all panels instead was slower here: its MR-value writes go to one stream per panel.
        for ip in 0..panels {
            let dst = &mut ap[ip * kc * MR..(ip + 1) * kc * MR];
            let (i0, mr) = (ic + ip * MR, MR.min(mc - ip * MR));
            for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
                let src = (pc + p) * s.m + i0;
                if mr == MR {
                    d.copy_from_slice(&a[src..src + MR]);
                } else {
                    d[..mr].copy_from_slice(&a[src..src + mr]);
                    d[mr..].fill(0.0);
                }
            }
        }
        return;
    }
    for ip in 0..panels {
        let dst = &mut ap[ip * kc * MR..(ip + 1) * kc * MR];
        let (i0, mr) = (ic + ip * MR, MR.min(mc - ip * MR));
        // A stored [m, k]: read the panel's rows as parallel streams, write sequentially. Rows
        // past the edge repeat the last row, then are zeroed.
        let srcs: [&[f32]; MR] = std::array::from_fn(|ii| {
            let r = (i0 + ii.min(mr - 1)) * s.k + pc;
            &a[r..r + kc]
        });
        for (p, d) in dst.chunks_exact_mut(MR).enumerate() {
            for ii in 0..MR {
                d[ii] = srcs[ii][p];
            }
        }
        if mr < MR {
            for d in dst.chunks_exact_mut(MR) {
                d[mr..].fill(0.0);
            }
        }
    }
}

/// Packs depths `pc..pc+kc`, columns `jc..jc+nc` of op(B) into NR-column panels, zero-padded;
/// the tasks run in parallel when `parallel`.
fn pack_b(s: &MatSpec, b: &[f32], bp: &mut [f32], blk: (usize, usize, usize, usize), parallel: bool) {
    let pk = PackB { s, b, pc: blk.0, kc: blk.1, jc: blk.2, nc: blk.3 };
    let (kc, tb) = (pk.kc, s.tb);
    match (tb, parallel) {
        (true, true) => bp.par_chunks_mut(kc * NR).enumerate().for_each(|(jp, d)| pk.column_panel(jp, d)),
        (true, false) => bp.chunks_mut(kc * NR).enumerate().for_each(|(jp, d)| pk.column_panel(jp, d)),
        (false, true) => {
            bp.par_chunks_mut(PACK_B_GROUP * kc * NR).enumerate().for_each(|(g, d)| pk.row_group(g, d))
        }
        (false, false) => {
            bp.chunks_mut(PACK_B_GROUP * kc * NR).enumerate().for_each(|(g, d)| pk.row_group(g, d))
        }
    }
}

/// One depth block and column block of B being packed.
struct PackB<'a> {
    s: &'a MatSpec,
    b: &'a [f32],
    pc: usize,
    kc: usize,
    jc: usize,
    nc: usize,
}

impl PackB<'_> {
    /// B stored [n, k]: panel `jp`, reading each column's depths contiguously.
    fn column_panel(&self, jp: usize, dst: &mut [f32]) {
        let (s, pc, kc) = (self.s, self.pc, self.kc);
        let j0 = self.jc + jp * NR;
        let nr = NR.min(self.jc + self.nc - j0);
        for jj in 0..nr {
            let col = &self.b[(j0 + jj) * s.k + pc..(j0 + jj) * s.k + pc + kc];
            for (p, &v) in col.iter().enumerate() {
                dst[p * NR + jj] = v;
            }
        }
        if nr < NR {
            for p in 0..kc {
                dst[p * NR + nr..(p + 1) * NR].fill(0.0);
            }
        }
    }

    /// B stored [k, n]: the `PACK_B_GROUP` panels of group `g`, walking the depths once and
    /// reading the group's columns of each depth row together. A panel-at-a-time walk reads one
    /// line per row at a stride of n floats, which for n a multiple of 1024 keeps missing the
    /// caches.
    fn row_group(&self, g: usize, dst: &mut [f32]) {
        let (s, pc, kc) = (self.s, self.pc, self.kc);
        let j0 = self.jc + g * PACK_B_GROUP * NR;
        let cols = (PACK_B_GROUP * NR).min(self.jc + self.nc - j0);
        for p in 0..kc {
            let row = &self.b[(pc + p) * s.n + j0..(pc + p) * s.n + j0 + cols];
            for (q, seg) in row.chunks(NR).enumerate() {
                let d = &mut dst[q * kc * NR + p * NR..q * kc * NR + (p + 1) * NR];
                if seg.len() == NR {
                    d.copy_from_slice(seg);
                } else {
                    d[..seg.len()].copy_from_slice(seg);
                    d[seg.len()..].fill(0.0);
                }
            }
        }
    }
}

/// # Safety
/// `c` must address MR rows of NR writable values at row stride `ldc`.
unsafe fn kernel_scalar(kc: usize, ap: &[f32], bp: &[f32], c: *mut f32, ldc: usize, first: bool) {
    let mut t = [0.0f32; MR * NR];
    if !first {
        for i in 0..MR {
            for j in 0..NR {
                t[i * NR + j] = *c.add(i * ldc + j);
            }
        }
    }
    for p in 0..kc {
        let av = &ap[p * MR..(p + 1) * MR];
        let bv = &bp[p * NR..(p + 1) * NR];
        for i in 0..MR {
            let row = &mut t[i * NR..(i + 1) * NR];
            for j in 0..NR {
                row[j] = av[i].mul_add(bv[j], row[j]);
            }
        }
    }
    for i in 0..MR {
        for j in 0..NR {
            *c.add(i * ldc + j) = t[i * NR + j];
        }
    }
}

/// # Safety
/// The CPU must have AVX2 and FMA; `ap`/`bp` must hold kc·MR and kc·NR values; `c` must
/// address MR rows of NR writable values at row stride `ldc`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_avx2(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, first: bool) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    if !first {
        for (i, ci) in acc.iter_mut().enumerate() {
            ci[0] = _mm256_loadu_ps(c.add(i * ldc));
            ci[1] = _mm256_loadu_ps(c.add(i * ldc + 8));
        }
    }
    let (mut a, mut b) = (ap, bp);
    for _ in 0..kc {
        let b0 = _mm256_loadu_ps(b);
        let b1 = _mm256_loadu_ps(b.add(8));
        for (i, ci) in acc.iter_mut().enumerate() {
            let av = _mm256_broadcast_ss(&*a.add(i));
            ci[0] = _mm256_fmadd_ps(av, b0, ci[0]);
            ci[1] = _mm256_fmadd_ps(av, b1, ci[1]);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    for (i, ci) in acc.iter().enumerate() {
        _mm256_storeu_ps(c.add(i * ldc), ci[0]);
        _mm256_storeu_ps(c.add(i * ldc + 8), ci[1]);
    }
}

/// # Safety
/// The CPU must have AVX-512F; `ap`/`bp` must hold kc·MR and kc·NR values; `c` must address MR
/// rows of NR writable values at row stride `ldc`.
///
/// One 16-lane register per row of the 6×16 tile; the same per-output FMA chain over k as the
/// other paths, so the same bits.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn kernel_avx512(kc: usize, ap: *const f32, bp: *const f32, c: *mut f32, ldc: usize, first: bool) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); MR];
    if !first {
        for (i, ci) in acc.iter_mut().enumerate() {
            *ci = _mm512_loadu_ps(c.add(i * ldc));
        }
    }
    let (mut a, mut b) = (ap, bp);
    for _ in 0..kc {
        let b0 = _mm512_loadu_ps(b);
        for (i, ci) in acc.iter_mut().enumerate() {
            *ci = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(i)), b0, *ci);
        }
        a = a.add(MR);
        b = b.add(NR);
    }
    for (i, ci) in acc.iter().enumerate() {
        _mm512_storeu_ps(c.add(i * ldc), *ci);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Philox;

    fn rand_vec(n: usize, salt: u64) -> Vec<f32> {
        let r = Philox::new(salt);
        (0..n as u64).map(|i| r.uniform(7, i) * 2.0 - 1.0).collect()
    }

    #[test]
    fn matches_reference_bitwise_on_awkward_shapes() {
        for &(m, n, k) in &[(1, 1, 1), (7, 19, 5), (73, 33, 300), (150, 1030, 17), (5, 3, 0)] {
            for &(ta, tb) in &[(false, false), (true, false), (false, true), (true, true)] {
                let s = MatSpec { m, n, k, ta, tb };
                let a = rand_vec(m * k, 1);
                let b = rand_vec(k * n, 2);
                let mut c = vec![f32::NAN; m * n];
                matmul(&s, &a, &b, &mut c);
                let r = matmul_reference(&s, &a, &b);
                let same = c.iter().zip(&r).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "mismatch at {s:?}");
            }
        }
    }

    #[test]
    fn batched_equals_loop() {
        let s = MatSpec { m: 9, n: 20, k: 13, ta: false, tb: true };
        let a = rand_vec(3 * 9 * 13, 3);
        let b = rand_vec(3 * 13 * 20, 4);
        let mut c = vec![0.0; 3 * 9 * 20];
        matmul_batched(&s, 3, &a, &b, &mut c);
        for t in 0..3 {
            let r = matmul_reference(&s, &a[t * 117..(t + 1) * 117], &b[t * 260..(t + 1) * 260]);
            assert_eq!(&c[t * 180..(t + 1) * 180], &r[..]);
        }
    }
}

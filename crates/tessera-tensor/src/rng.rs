//! Counter-based random numbers: Philox4x32-10 keyed by a seed, indexed by (purpose, index).
//!
//! A value depends only on `(seed, purpose, index)`, never on how many values were drawn before
//! or on which thread draws it. That is what makes initialisation, data order and sampling
//! reproducible under any parallel schedule.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// A Philox4x32-10 generator. Holds only its key, so it is `Copy` and freely shared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Philox {
    key: [u32; 2],
}

/// A stable 64-bit purpose code from a name (first 8 bytes of its BLAKE3 hash).
pub fn purpose(name: &str) -> u64 {
    let h = blake3::hash(name.as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b)
}

impl Philox {
    /// A generator keyed by `seed`.
    pub fn new(seed: u64) -> Self {
        Self { key: [seed as u32, (seed >> 32) as u32] }
    }

    /// The four 32-bit words for counter `(purpose, index)`.
    pub fn block(&self, purpose: u64, index: u64) -> [u32; 4] {
        let mut c = [index as u32, (index >> 32) as u32, purpose as u32, (purpose >> 32) as u32];
        let mut k = self.key;
        for _ in 0..10 {
            let p0 = u64::from(M0) * u64::from(c[0]);
            let p1 = u64::from(M1) * u64::from(c[2]);
            let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
            let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
            c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
            k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
        }
        c
    }

    /// A 64-bit value.
    pub fn u64(&self, purpose: u64, index: u64) -> u64 {
        let w = self.block(purpose, index);
        u64::from(w[0]) | (u64::from(w[1]) << 32)
    }

    /// Uniform in `[0, 1)` with 24 random bits.
    pub fn uniform(&self, purpose: u64, index: u64) -> f32 {
        (self.block(purpose, index)[0] >> 8) as f32 * (1.0 / 16_777_216.0)
    }

    /// Uniform integer in `[0, n)` (n > 0), by 128-bit multiply (bias below 2⁻⁶⁴·n).
    pub fn below(&self, purpose: u64, index: u64, n: u64) -> u64 {
        assert!(n > 0, "below(0)");
        ((u128::from(self.u64(purpose, index)) * u128::from(n)) >> 64) as u64
    }

    /// Standard normal by Box–Muller over one block, computed in f64 with `libm`.
    pub fn normal(&self, purpose: u64, index: u64) -> f32 {
        let w = self.block(purpose, index);
        let u1 = (f64::from(w[0] >> 8) + 1.0) / 16_777_217.0; // (0, 1]
        let u2 = f64::from(w[1] >> 8) / 16_777_216.0; // [0, 1)
        let r = libm::sqrt(-2.0 * libm::log(u1));
        (r * libm::cos(std::f64::consts::TAU * u2)) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Random123's published vector: Philox4x32-10, counter 0, key 0.
        assert_eq!(Philox::new(0).block(0, 0), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    }

    #[test]
    fn normal_has_unit_moments() {
        let r = Philox::new(42);
        let n = 200_000u64;
        let xs: Vec<f64> = (0..n).map(|i| f64::from(r.normal(1, i))).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n as f64;
        assert!(mean.abs() < 0.01 && (var - 1.0).abs() < 0.02, "{mean} {var}");
    }

    #[test]
    fn streams_differ_by_purpose_and_seed() {
        assert_ne!(Philox::new(1).u64(1, 0), Philox::new(1).u64(2, 0));
        assert_ne!(Philox::new(1).u64(1, 0), Philox::new(2).u64(1, 0));
        assert!(Philox::new(3).below(4, 5, 10) < 10);
    }
}

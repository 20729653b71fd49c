//! Portable, vectorizable elementary functions built only from IEEE-754 basic operations.
//!
//! `libm` gives portable bits but is scalar and branchy; the elementwise hot loops (GELU,
//! softmax, cross-entropy) need an `exp` the compiler can vectorize. [`exp`] uses only
//! correctly rounded `+ − × /`, comparisons and bit operations in a fixed order (Rust never
//! contracts to FMA on its own), so it gives the same bits on every IEEE machine, vectorized or
//! not. Its accuracy against `libm::expf` is tested below (within 2 ulp).

const LOG2E: f32 = std::f32::consts::LOG2_E;
/// ln 2 split so that `n · LN2_HI` is exact for |n| ≤ 2⁸.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// 1.5·2²³: adding and subtracting it rounds to the nearest integer (ties to even).
const ROUND: f32 = 12_582_912.0;
/// Above this, e^x overflows f32.
const MAX_X: f32 = 88.722_83;
/// Below this, e^x is under the smallest normal f32 (flushed to 0).
const MIN_X: f32 = -87.336_55;

/// e^x: range reduction `x = n·ln2 + r`, |r| ≤ ln2/2, a degree-7 polynomial for e^r, and 2ⁿ
/// from the exponent bits. NaN gives NaN, large gives +∞, very negative gives +0.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(MIN_X, MAX_X);
    let t = xc * LOG2E + ROUND;
    let n = t - ROUND;
    let r = (xc - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // n ∈ [−126, 128]; split 2ⁿ into two factors so n = 128 does not overflow the exponent.
    // The same integer as `n as i32`, read off the rounding sum's mantissa (|n| < 2²²): a plain
    // integer subtraction, which vectorizes where a saturating float-to-int cast does not.
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let half = n >> 1;
    let s1 = f32::from_bits(((half + 127) as u32) << 23);
    let s2 = f32::from_bits(((n - half + 127) as u32) << 23);
    let y = (p * s1) * s2;
    if x.is_nan() {
        x
    } else if x > MAX_X {
        f32::INFINITY
    } else if x < MIN_X {
        0.0
    } else {
        y
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> i64 {
        (i64::from(a.to_bits() as i32) - i64::from(b.to_bits() as i32)).abs()
    }

    #[test]
    fn exp_is_within_2_ulp_of_libm() {
        let mut worst = 0;
        let mut x = -87.0f32;
        while x < 88.7 {
            worst = worst.max(ulps(exp(x), libm::expf(x)));
            x += 0.000_731;
        }
        for x in [-1e-8f32, 0.0, 1e-8, 1.0, -1.0, 0.5, 88.0, -87.0] {
            worst = worst.max(ulps(exp(x), libm::expf(x)));
        }
        assert!(worst <= 2, "worst error {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(-100.0), 0.0);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert!(exp(f32::NAN).is_nan());
    }
}

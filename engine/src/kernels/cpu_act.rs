//! Activations as CPU kernels, for inference.
//!
//! The UNet's feed-forward is GEGLU: `a * gelu(gate)`, the two halves of one projection.
//! candle takes it as a strided copy of each half, GELU through libm's scalar `erff`, and a
//! multiply, three passes into fresh tensors; here it is one vectorised pass that reads the
//! projection once and writes the product.

use rayon::prelude::*;

use super::cpu_attention::exp_nonpositive;
use super::simd::Level;

/// `erfc(x)` to a relative error of about 1.2e-7 everywhere (the Chebyshev fit of
/// Numerical Recipes' `erfcc`, with the polynomial exponential), branch-free so it
/// vectorises.
#[inline(always)]
pub(crate) fn erfc(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07 + t * (-1.135_204 + t * (1.488_515_9 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    // The exponent is <= ~1e-8 for every z, so the non-positive exponential applies.
    let ans = t * exp_nonpositive((-z * z + poly).min(0.0));
    // erfc(9) is 4e-37: beyond it give exactly 0 (as libm's erff does long before), so the
    // far tail never feeds denormal numbers (slow on x86) into the next operations.
    let ans = if z > 9.0 { 0.0 } else { ans };
    if x >= 0.0 { ans } else { 2.0 - ans }
}

/// GELU with the exact (erf) form, as diffusers' `GELU(approximate="none")`:
/// `x/2 * erfc(-x/sqrt 2)`, which keeps its relative accuracy in the negative tail (measured
/// worst relative error 1.2e-6 for |x| <= 3, 3.4e-6 out to 6; f32 ulps are 6e-8).
#[inline(always)]
pub(crate) fn gelu(x: f32) -> f32 {
    0.5 * x * erfc(-x * std::f32::consts::FRAC_1_SQRT_2)
}

crate::simd_fn! {
    /// One row: `out[j] = row[j] * gelu(row[half + j])`.
    fn geglu_row(row: &[f32], out: &mut [f32]) {
        let (a, gate) = row.split_at(out.len());
        for ((o, &x), &g) in out.iter_mut().zip(a).zip(gate) {
            *o = x * gelu(g);
        }
    }
}

/// GEGLU over rows of `2 * half` values (the value half first, then the gate half):
/// returns rows of `half` values.
pub fn geglu(x: &[f32], half: usize) -> Vec<f32> {
    let rows = x.len() / (2 * half).max(1);
    let mut out = vec![0f32; rows * half];
    let level = Level::current();
    out.par_chunks_mut(half)
        .zip(x.par_chunks(2 * half))
        .with_min_len(16)
        .for_each(|(dst, src)| geglu_row(level, src, dst));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// erfc in f64: 1 - the Taylor series of erf for |x| <= 2 (no cancellation there), the
    /// continued fraction beyond (evaluated backwards, 200 terms), mirrored for x < -2.
    fn erfc64(x: f64) -> f64 {
        if x < -2.0 {
            return 2.0 - erfc64(-x);
        }
        if x <= 2.0 {
            let (mut term, mut sum) = (x, x);
            for n in 1..100 {
                term *= -x * x / n as f64;
                sum += term / (2 * n + 1) as f64;
            }
            return 1.0 - sum * 2.0 / std::f64::consts::PI.sqrt();
        }
        let mut k = x;
        for n in (1..200).rev() {
            k = x + (n as f64 / 2.0) / k;
        }
        (-x * x).exp() / (std::f64::consts::PI.sqrt() * k)
    }

    #[test]
    fn erfc_and_gelu_match_their_definitions() {
        // Worst relative error near zero (|x| <= 3) and in the tails (to 6): in the tails
        // the f32 exponent -z^2 (up to 18) carries ~1e-6 absolute error into e^-z^2.
        let (mut erfc_near, mut erfc_far, mut gelu_near, mut gelu_far) = (0f64, 0f64, 0f64, 0f64);
        for i in -6000..=6000 {
            let x = i as f32 * 0.001;
            let want = erfc64(f64::from(x));
            let e = ((f64::from(erfc(x)) - want) / want).abs();
            // erfc where GELU needs it: at |x| / sqrt 2 for |x| <= 6.
            if x.abs() <= 1.5 {
                erfc_near = erfc_near.max(e);
            } else if x <= 4.25 {
                erfc_far = erfc_far.max(e);
            }
            let g = 0.5 * f64::from(x) * erfc64(-f64::from(x) / 2f64.sqrt());
            if g != 0.0 {
                let e = ((f64::from(gelu(x)) - g) / g).abs();
                if x.abs() <= 3.0 {
                    gelu_near = gelu_near.max(e);
                } else {
                    gelu_far = gelu_far.max(e);
                }
            }
        }
        eprintln!("relative error: erfc {erfc_near:.1e} / {erfc_far:.1e}, gelu {gelu_near:.1e} / {gelu_far:.1e}");
        assert!(erfc_near < 5e-7 && gelu_near < 2e-6, "{erfc_near} {gelu_near}");
        assert!(erfc_far < 5e-6 && gelu_far < 5e-6, "{erfc_far} {gelu_far}");
        assert_eq!(gelu(-30.0), 0.0);
        assert!((gelu(30.0) - 30.0).abs() < 1e-5);
    }

    #[test]
    fn geglu_matches_candle_at_every_instruction_set() {
        use candle_core::{Device, Tensor};
        let (rows, half) = (37, 45);
        let x: Vec<f32> = crate::rng::TorchRng::new(9)
            .randn_f32(rows * 2 * half)
            .iter()
            .map(|v| v * 2.5)
            .collect();
        let t = Tensor::from_vec(x.clone(), (rows, 2 * half), &Device::Cpu).expect("test value");
        let want = (t.narrow(1, 0, half).expect("test value")
            * t.narrow(1, half, half).expect("test value").gelu_erf().expect("test value"))
        .expect("test value")
        .flatten_all()
        .expect("test value")
        .to_vec1::<f32>()
        .expect("test value");
        for level in Level::ALL.into_iter().filter(|l| l.available()) {
            let got = super::super::simd::force(level, || geglu(&x, half)).expect("test value");
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 3e-6, "{level:?}: {err}");
        }
    }
}

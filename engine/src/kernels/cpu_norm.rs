//! Group normalisation (optionally followed by SiLU) as one CPU kernel, for inference.
//!
//! candle_nn's GroupNorm is eight tensor operations (sum, subtract, square, sum, add, sqrt,
//! divide, then the per-channel scale and shift), each a full pass over the tensor into a
//! freshly allocated one, and the SiLU the UNet and VAE apply next is another. Here each
//! (batch, group) slice is read twice for its statistics (mean, then the variance around
//! it, like candle) and once more to write `x * a + b` per channel, with SiLU applied in
//! the same pass when asked.

use rayon::prelude::*;

use super::cpu_attention::exp_nonpositive;

/// `x / (1 + e^-x)` with the polynomial exponential, branch-free so it vectorises.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let sig = if x >= 0.0 { 1.0 / (1.0 + e) } else { e / (1.0 + e) };
    x * sig
}

/// Mean and variance of one group's values, accumulated in f64 lanes.
#[inline(always)]
pub(crate) fn stats(v: &[f32]) -> (f32, f32) {
    let n = v.len().max(1) as f64;
    let mut acc = [0f64; 4];
    let chunks = v.chunks_exact(4);
    let rest: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    for c in chunks {
        for l in 0..4 {
            acc[l] += f64::from(c[l]);
        }
    }
    let mean = (acc.iter().sum::<f64>() + rest) / n;
    let m = mean as f32;
    let mut acc = [0f64; 4];
    let chunks = v.chunks_exact(4);
    let rest: f64 = chunks.remainder().iter().map(|&x| f64::from((x - m) * (x - m))).sum();
    for c in chunks {
        for l in 0..4 {
            let d = c[l] - m;
            acc[l] += f64::from(d * d);
        }
    }
    (m, ((acc.iter().sum::<f64>() + rest) / n) as f32)
}

/// Shape and parameters of one group normalisation.
#[derive(Clone, Copy, Debug)]
pub struct Norm<'a> {
    pub channels: usize,
    /// Values per channel (height x width).
    pub plane: usize,
    pub groups: usize,
    pub eps: f32,
    pub weight: &'a [f32],
    pub bias: &'a [f32],
    pub silu: bool,
}

crate::simd_fn! {
    /// Normalises one (batch, group) slice into `out`.
    fn write_group(x: &[f32], out: &mut [f32], ch0: usize, n: &Norm) {
        let (mean, var) = stats(x);
        let rstd = 1.0 / (var + n.eps).sqrt();
        for (i, (src, dst)) in x.chunks(n.plane).zip(out.chunks_mut(n.plane)).enumerate() {
            let a = n.weight[ch0 + i] * rstd;
            let b = n.bias[ch0 + i] - mean * a;
            if n.silu {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = silu(s * a + b);
                }
            } else {
                for (d, &s) in dst.iter_mut().zip(src) {
                    *d = s * a + b;
                }
            }
        }
    }
}

/// Normalises `x`, row-major `[batch, channels, plane]`, group by group.
pub fn group_norm(x: &[f32], n: Norm) -> Vec<f32> {
    let per_group = n.channels / n.groups * n.plane;
    let mut out = vec![0f32; x.len()];
    let level = super::simd::Level::current();
    out.par_chunks_mut(per_group)
        .zip(x.par_chunks(per_group))
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let ch0 = (i % n.groups) * (n.channels / n.groups);
            write_group(level, src, dst, ch0, &n)
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_matches_the_definition() {
        for i in -2000..2000 {
            let x = i as f32 * 0.01;
            let want = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            assert!((f64::from(silu(x)) - want).abs() <= 1e-6 * want.abs().max(1e-3), "{x}");
        }
        assert!(silu(-200.0).abs() < 1e-30);
        assert!((silu(200.0) - 200.0).abs() < 1e-4);
    }

    #[test]
    fn every_instruction_set_matches_a_double_precision_reference() {
        let (b, channels, plane, groups) = (2, 12, 37, 3);
        let x: Vec<f32> = crate::rng::TorchRng::new(5)
            .randn_f32(b * channels * plane)
            .iter()
            .map(|v| v * 3.0 + 1.0)
            .collect();
        let weight: Vec<f32> = (0..channels).map(|i| 0.5 + i as f32 * 0.1).collect();
        let bias: Vec<f32> = (0..channels).map(|i| i as f32 * 0.05 - 0.3).collect();
        let per = channels / groups * plane;
        for silu_on in [false, true] {
            let mut want = vec![0f64; x.len()];
            for (g, chunk) in x.chunks(per).enumerate() {
                let mean = chunk.iter().map(|&v| f64::from(v)).sum::<f64>() / per as f64;
                let var = chunk.iter().map(|&v| (f64::from(v) - mean).powi(2)).sum::<f64>() / per as f64;
                for (i, &v) in chunk.iter().enumerate() {
                    let c = (g % groups) * (channels / groups) + i / plane;
                    let y = (f64::from(v) - mean) / (var + 1e-5).sqrt() * f64::from(weight[c]) + f64::from(bias[c]);
                    want[g * per + i] = if silu_on { y / (1.0 + (-y).exp()) } else { y };
                }
            }
            let norm = Norm {
                channels,
                plane,
                groups,
                eps: 1e-5,
                weight: &weight,
                bias: &bias,
                silu: silu_on,
            };
            for level in crate::kernels::simd::Level::ALL.into_iter().filter(|l| l.available()) {
                let got = crate::kernels::simd::force(level, || group_norm(&x, norm)).expect("test value");
                let err = got.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0f64, f64::max);
                assert!(err < 2e-5, "{level:?} silu {silu_on}: {err}");
            }
        }
    }
}

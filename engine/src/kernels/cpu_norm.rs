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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn write_group_avx2(x: &[f32], out: &mut [f32], ch0: usize, n: &Norm) {
    write_group(x, out, ch0, n)
}

/// Normalises `x`, row-major `[batch, channels, plane]`, group by group.
pub fn group_norm(x: &[f32], n: Norm) -> Vec<f32> {
    let per_group = n.channels / n.groups * n.plane;
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(per_group)
        .zip(x.par_chunks(per_group))
        .enumerate()
        .for_each(|(i, (dst, src))| {
            let ch0 = (i % n.groups) * (n.channels / n.groups);
            #[cfg(target_arch = "x86_64")]
            if super::cpu_attention::has_avx2() {
                // SAFETY: the CPU supports AVX2 and FMA (checked at run time just above).
                #[allow(unsafe_code)]
                unsafe {
                    write_group_avx2(src, dst, ch0, &n)
                };
                return;
            }
            write_group(src, dst, ch0, &n)
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
}

//! The CPU convolution used for inference.
//!
//! candle 0.11 convolves on the CPU in tiles of 512 output pixels: per call it reorders the
//! input to NHWC and the kernel to (out, ky, kx, in) element by element, fills each tile's
//! unfolded input one value at a time, multiplies each tile with its own matrix product
//! (re-packing the whole kernel for every tile) and scatters the result back to NCHW. On an
//! SD 1.5 UNet step that overhead costs more than the products themselves.
//!
//! Here the unfolded input of a band of output rows is built row by row with slice copies, in
//! the order of the kernel's own (in, ky, kx) layout, so the kernel is used as stored, and one
//! matrix product per band writes straight into the NCHW output, which starts out holding the
//! bias. A 1x1 convolution with stride 1 multiplies the input itself. The unfolded input never
//! exceeds the byte budget the caller gives (bands of output rows), as before.

use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Padding, stride and the unfold budget of one convolution (groups 1, dilation 1).
#[derive(Clone, Copy, Debug)]
pub struct CpuConv {
    pub padding: usize,
    pub stride: usize,
    pub budget: usize,
}

/// Whether [`CpuConv`] handles this input: CPU tensors in f32 or f16.
pub fn supports(x: &Tensor) -> bool {
    x.device().is_cpu() && matches!(x.dtype(), DType::F32 | DType::F16)
}

impl CpuConv {
    /// `x` (b, c, h, w) convolved with `weight` (o, c, kh, kw), plus `bias` (o) when given.
    pub fn forward(&self, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let x = x.contiguous()?;
        let weight = weight.contiguous()?;
        match bias {
            Some(b) => x.apply_op3_no_bwd(&weight, &b.contiguous()?, self),
            None => x.apply_op2_no_bwd(&weight, self),
        }
    }

    fn run(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let (b, c, h, wd) = x.1.shape().dims4()?;
        let (o, c2, kh, kw) = w.1.shape().dims4()?;
        if c != c2 {
            candle_core::bail!("convolution: input has {c} channels, kernel expects {c2}");
        }
        let p = self.padding;
        let s = self.stride.max(1);
        if h + 2 * p < kh || wd + 2 * p < kw {
            candle_core::bail!("convolution: {h}x{wd} input (padding {p}) is smaller than the {kh}x{kw} kernel");
        }
        let dims = Dims {
            b,
            c,
            h,
            w: wd,
            o,
            kh,
            kw,
            p,
            s,
            h_out: (h + 2 * p - kh) / s + 1,
            w_out: (wd + 2 * p - kw) / s + 1,
        };
        let shape = Shape::from((b, o, dims.h_out, dims.w_out));
        macro_rules! go {
            ($variant:ident) => {{
                let (CpuStorage::$variant(xs), CpuStorage::$variant(ws)) = (x.0, w.0) else {
                    candle_core::bail!("convolution: input and kernel dtypes differ");
                };
                let bias = match bias {
                    Some((CpuStorage::$variant(bs), l)) => Some(slice(bs, l)?),
                    Some(_) => candle_core::bail!("convolution: bias dtype differs"),
                    None => None,
                };
                let out = conv(&dims, slice(xs, x.1)?, slice(ws, w.1)?, bias, self.budget);
                Ok((CpuStorage::$variant(out), shape))
            }};
        }
        match (x.0, w.0) {
            // bf16 weights on f32 activations (`--dtype bf16` on a CPU with AVX-512 BF16).
            (CpuStorage::F32(xs), CpuStorage::BF16(ws)) => {
                let bias = match bias {
                    Some((CpuStorage::F32(bs), l)) => Some(slice(bs, l)?),
                    Some(_) => candle_core::bail!("convolution: a bf16 kernel takes an f32 bias"),
                    None => None,
                };
                use half::slice::HalfFloatSliceExt;
                let ws = slice(ws, w.1)?.reinterpret_cast();
                if !(c * kh * kw).is_multiple_of(2) {
                    candle_core::bail!("convolution: bf16 kernels need an even depth (in x kh x kw)");
                }
                let out = conv_bf16(&dims, slice(xs, x.1)?, ws, bias, self.budget);
                Ok((CpuStorage::F32(out), shape))
            }
            (CpuStorage::F32(_), _) => go!(F32),
            (CpuStorage::F16(_), _) => go!(F16),
            _ => candle_core::bail!("convolution: the CPU kernel takes f32 or f16"),
        }
    }
}

fn slice<'a, T>(data: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, z)) => Ok(&data[a..z]),
        None => candle_core::bail!("convolution: expected a contiguous tensor"),
    }
}

pub(crate) struct Dims {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub o: usize,
    pub kh: usize,
    pub kw: usize,
    pub p: usize,
    pub s: usize,
    pub h_out: usize,
    pub w_out: usize,
}

#[allow(unsafe_code)]
pub(crate) fn conv<T: Copy + Send + Sync + num_traits::Zero + num_traits::One + 'static>(
    d: &Dims,
    x: &[T],
    w: &[T],
    bias: Option<&[T]>,
    budget: usize,
) -> Vec<T> {
    let hw_out = d.h_out * d.w_out;
    let k = d.c * d.kh * d.kw;
    let mut out = vec![T::zero(); d.b * d.o * hw_out];
    if let Some(bias) = bias {
        out.par_chunks_mut(hw_out).enumerate().for_each(|(i, row)| row.fill(bias[i % d.o]));
    }
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    let direct = d.kh == 1 && d.kw == 1 && d.s == 1 && d.p == 0;
    let row_bytes = k * d.w_out * std::mem::size_of::<T>();
    let rows_per_band = if direct {
        d.h_out
    } else {
        (budget / row_bytes.max(1)).clamp(1, d.h_out)
    };
    let mut col: Vec<T> = if direct {
        vec![]
    } else {
        vec![T::zero(); k * rows_per_band * d.w_out]
    };
    for bi in 0..d.b {
        let xb = &x[bi * d.c * d.h * d.w..(bi + 1) * d.c * d.h * d.w];
        let ob = &mut out[bi * d.o * hw_out..(bi + 1) * d.o * hw_out];
        let mut r0 = 0;
        while r0 < d.h_out {
            let r1 = (r0 + rows_per_band).min(d.h_out);
            let n = (r1 - r0) * d.w_out;
            let rhs: &[T] = if direct {
                xb
            } else {
                let _span = crate::profile::span(crate::profile::Stage::Unfold);
                unfold(d, xb, r0, r1, &mut col[..k * n]);
                &col[..k * n]
            };
            // SAFETY: lhs is the (o, k) kernel, rhs the (k, n) unfolded band, dst the (o, n)
            // block of this band inside the (o, hw_out) output; all strides match those
            // shapes and the slices are long enough.
            unsafe {
                gemm::gemm(
                    d.o,
                    n,
                    k,
                    ob.as_mut_ptr().add(r0 * d.w_out),
                    1,
                    hw_out as isize,
                    bias.is_some(),
                    w.as_ptr(),
                    1,
                    k as isize,
                    rhs.as_ptr(),
                    1,
                    n as isize,
                    T::one(),
                    T::one(),
                    false,
                    false,
                    false,
                    parallelism,
                );
            }
            r0 = r1;
        }
    }
    out
}

/// [`conv`] with bf16 weights (as stored: `[o, c * kh * kw]` bits) on f32 activations,
/// through [`super::cpu_bf16::matmul`].
pub(crate) fn conv_bf16(d: &Dims, x: &[f32], w: &[u16], bias: Option<&[f32]>, budget: usize) -> Vec<f32> {
    use super::cpu_bf16::{Path, Source, Strided, matmul};
    let hw_out = d.h_out * d.w_out;
    let k = d.c * d.kh * d.kw;
    let mut out = vec![0f32; d.b * d.o * hw_out];
    if let Some(bias) = bias {
        out.par_chunks_mut(hw_out).enumerate().for_each(|(i, row)| row.fill(bias[i % d.o]));
    }
    let path = Path::best();
    let direct = d.kh == 1 && d.kw == 1 && d.s == 1 && d.p == 0;
    let row_bytes = k * d.w_out * std::mem::size_of::<f32>();
    let rows_per_band = if direct {
        d.h_out
    } else {
        (budget / row_bytes.max(1)).clamp(1, d.h_out)
    };
    let mut col: Vec<f32> = if direct { vec![] } else { vec![0f32; k * rows_per_band * d.w_out] };
    for bi in 0..d.b {
        let xb = &x[bi * d.c * d.h * d.w..(bi + 1) * d.c * d.h * d.w];
        let ob = &mut out[bi * d.o * hw_out..(bi + 1) * d.o * hw_out];
        let mut r0 = 0;
        while r0 < d.h_out {
            let r1 = (r0 + rows_per_band).min(d.h_out);
            let n = (r1 - r0) * d.w_out;
            let rhs: &[f32] = if direct {
                xb
            } else {
                let _span = crate::profile::span(crate::profile::Stage::Unfold);
                unfold(d, xb, r0, r1, &mut col[..k * n]);
                &col[..k * n]
            };
            let at = r0 * d.w_out;
            matmul(
                path,
                d.o,
                n,
                k,
                w,
                Source::F32(Strided { data: rhs, rs: n, cs: 1 }),
                &mut ob[at..],
                hw_out,
            );
            r0 = r1;
        }
    }
    out
}

/// Writes the unfolded input of output rows `r0..r1` into `col`: one row of
/// `(r1 - r0) * w_out` values per (channel, ky, kx), zero where the window leaves the input.
pub(crate) fn unfold<T: Copy + Send + Sync + num_traits::Zero>(d: &Dims, x: &[T], r0: usize, r1: usize, col: &mut [T]) {
    let n = (r1 - r0) * d.w_out;
    col.par_chunks_mut(n).enumerate().for_each(|(row, dst)| {
        let ci = row / (d.kh * d.kw);
        let ky = (row / d.kw) % d.kh;
        let kx = row % d.kw;
        let plane = &x[ci * d.h * d.w..(ci + 1) * d.h * d.w];
        // Output columns whose input column lies inside the picture.
        let x_lo = d.p.saturating_sub(kx).div_ceil(d.s).min(d.w_out);
        let x_hi = if d.w + d.p > kx {
            ((d.w + d.p - kx - 1) / d.s + 1).min(d.w_out)
        } else {
            0
        }
        .max(x_lo);
        for (yo, seg) in (r0..r1).zip(dst.chunks_mut(d.w_out)) {
            let iy = (yo * d.s + ky) as isize - d.p as isize;
            if iy < 0 || iy >= d.h as isize {
                seg.fill(T::zero());
                continue;
            }
            let src = &plane[iy as usize * d.w..(iy as usize + 1) * d.w];
            seg[..x_lo].fill(T::zero());
            seg[x_hi..].fill(T::zero());
            if d.s == 1 {
                let a = x_lo + kx - d.p;
                seg[x_lo..x_hi].copy_from_slice(&src[a..a + (x_hi - x_lo)]);
            } else {
                for (xo, v) in seg[x_lo..x_hi].iter_mut().enumerate() {
                    *v = src[(xo + x_lo) * d.s + kx - d.p];
                }
            }
        }
    });
}

impl CustomOp2 for CpuConv {
    fn name(&self) -> &'static str {
        "latent-conv2d"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), None)
    }
}

impl CustomOp3 for CpuConv {
    fn name(&self) -> &'static str {
        "latent-conv2d-bias"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run((s1, l1), (s2, l2), Some((s3, l3)))
    }
}

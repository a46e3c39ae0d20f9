//! Differentiable CPU convolution and group normalisation for training (f32).
//!
//! Built from candle's tensor operations, a training step of the embedded model spent most of
//! its time in the backward pass (1.09 of 1.5 s, five times the forward): a convolution as
//! nine shifted windows stacked and multiplied differentiates into nine zero-padded copies of
//! the input, each added into the gradient, plus a batched product whose kernel gradient is
//! summed over the batch by a strided reduction; candle_nn's group norm is eight operations,
//! each with its own backward pass, allocation and accumulation. Here each is one custom
//! operation with its gradient written out:
//!
//! - convolution: forward as inference ([`super::cpu_conv`]); kernel gradient
//!   `sum_b dy_b · unfold(x_b)ᵀ` (one matrix product per image, accumulated in place), input
//!   gradient `fold(Wᵀ · dy_b)` (the transpose of the unfold, scatter-added per channel),
//!   bias gradient the per-channel sum of `dy`;
//! - group norm: `y = x̂ · γ + β` with `x̂ = (x − μ) / σ` per (image, group), and
//!   `dx = (γ·dy − mean(γ·dy) − x̂ · mean(γ·dy · x̂)) / σ` over the group, `dγ = Σ dy · x̂`,
//!   `dβ = Σ dy` over images and pixels.
//!
//! Both are checked against candle's autograd on the operations they replace (tests below).

use candle_core::{CpuStorage, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::cpu_conv::{Dims, conv, unfold};
use super::cpu_norm::{Norm, group_norm as norm_forward, stats};

/// Whether the training kernels handle `x`: f32 on the CPU.
pub fn supports(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == candle_core::DType::F32
}

fn f32s<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: the training kernels take f32");
    };
    match l.contiguous_offsets() {
        Some((a, z)) => Ok(&v[a..z]),
        None => candle_core::bail!("{what}: expected a contiguous tensor"),
    }
}

fn gemm_par() -> gemm::Parallelism {
    let threads = rayon::current_num_threads();
    if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    }
}

/// A matrix in a slice: `rows x cols` with the given strides between rows and columns.
#[derive(Clone, Copy)]
struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl Mat<'_> {
    fn fits(&self) -> bool {
        self.rows == 0 || self.cols == 0 || (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride < self.data.len()
    }
}

/// `dst = lhs · rhs` (or `dst += lhs · rhs` when `accumulate`), `dst` row-major with
/// `lhs.cols` = `rhs.rows`; every extent is checked against its slice before the product.
#[allow(unsafe_code)]
fn matmul(dst: &mut [f32], accumulate: bool, lhs: Mat, rhs: Mat) -> Result<()> {
    let (m, k, n) = (lhs.rows, lhs.cols, rhs.cols);
    if rhs.rows != k || dst.len() < m * n || !lhs.fits() || !rhs.fits() {
        candle_core::bail!(
            "training kernel: matrix product {m}x{k} by {}x{n} does not fit its buffers",
            rhs.rows
        );
    }
    // SAFETY: the extents of dst (m x n, row stride n), lhs and rhs were checked against
    // their slices just above; gemm reads and writes only inside them.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.data.as_ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1f32,
            1f32,
            false,
            false,
            false,
            gemm_par(),
        );
    }
    Ok(())
}

/// Convolution geometry (groups 1, dilation 1).
#[derive(Clone, Copy, Debug)]
struct Geometry {
    padding: usize,
    stride: usize,
}

impl Geometry {
    fn dims(&self, x: &Shape, w: &Shape) -> Result<Dims> {
        let (b, c, h, wd) = x.dims4()?;
        let (o, c2, kh, kw) = w.dims4()?;
        let (p, s) = (self.padding, self.stride.max(1));
        if c != c2 || h + 2 * p < kh || wd + 2 * p < kw {
            candle_core::bail!("convolution: input {x:?} does not fit kernel {w:?} with padding {p}");
        }
        Ok(Dims {
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
        })
    }
}

/// `x` (b, c, h, w) convolved with `weight` (o, c, kh, kw) plus `bias` (o), differentiable
/// in all three. f32 CPU tensors.
pub fn conv2d(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>, padding: usize, stride: usize) -> Result<Tensor> {
    let g = Geometry { padding, stride };
    let (x, weight) = (x.contiguous()?, weight.contiguous()?);
    match bias {
        Some(b) => x.apply_op3(&weight, &b.contiguous()?, ConvOp(g)),
        None => x.apply_op2(&weight, ConvOp(g)),
    }
}

/// The convolution with its backward pass.
struct ConvOp(Geometry);

impl ConvOp {
    fn forward(
        &self,
        x: (&CpuStorage, &Layout),
        w: (&CpuStorage, &Layout),
        bias: Option<(&CpuStorage, &Layout)>,
    ) -> Result<(CpuStorage, Shape)> {
        let d = self.0.dims(x.1.shape(), w.1.shape())?;
        let bias = match bias {
            Some((s, l)) => Some(f32s(s, l, "convolution bias")?),
            None => None,
        };
        let out = conv(&d, f32s(x.0, x.1, "convolution")?, f32s(w.0, w.1, "convolution")?, bias, usize::MAX);
        Ok((CpuStorage::F32(out), Shape::from((d.b, d.o, d.h_out, d.w_out))))
    }

    /// Gradients of the input and the kernel, each only where it is wanted (a frozen kernel,
    /// as in LoRA training, or the UNet's input need none).
    fn grads(&self, x: &Tensor, w: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let dy = dy.contiguous()?;
        let dx = match x.track_op() {
            true => Some(dy.apply_op2_no_bwd(w, &ConvInputGrad(self.0, x.shape().clone()))?),
            false => None,
        };
        let dw = match w.track_op() {
            true => Some(x.apply_op2_no_bwd(&dy, &ConvKernelGrad(self.0, w.shape().clone()))?),
            false => None,
        };
        Ok((dx, dw))
    }
}

impl CustomOp2 for ConvOp {
    fn name(&self) -> &'static str {
        "latent-train-conv2d"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        self.forward((s1, l1), (s2, l2), None)
    }
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        self.grads(x, w, dy)
    }
}

impl CustomOp3 for ConvOp {
    fn name(&self) -> &'static str {
        "latent-train-conv2d-bias"
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
        self.forward((s1, l1), (s2, l2), Some((s3, l3)))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (dx, dw) = self.grads(x, w, dy)?;
        // Per-channel sum of dy over images and pixels.
        let db = match b.track_op() {
            true => Some(dy.contiguous()?.apply_op1_no_bwd(&ChannelSum)?),
            false => None,
        };
        Ok((dx, dw, db))
    }
}

/// `(b, c, ...)` -> `(c)`: the sum over images and pixels of each channel.
struct ChannelSum;

impl candle_core::CustomOp1 for ChannelSum {
    fn name(&self) -> &'static str {
        "latent-channel-sum"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let v = f32s(s, l, "channel sum")?;
        let dims = l.shape().dims();
        let (b, c) = (dims[0], dims[1]);
        let plane: usize = dims[2..].iter().product();
        let out: Vec<f32> = (0..c)
            .into_par_iter()
            .map(|ci| {
                let mut acc = 0f64;
                for bi in 0..b {
                    let row = &v[(bi * c + ci) * plane..(bi * c + ci + 1) * plane];
                    acc += row.iter().map(|&x| f64::from(x)).sum::<f64>();
                }
                acc as f32
            })
            .collect();
        Ok((CpuStorage::F32(out), Shape::from(c)))
    }
}

/// `(dy, W)` -> dx: `fold(Wᵀ · dy_b)` for every image.
struct ConvInputGrad(Geometry, Shape);

impl CustomOp2 for ConvInputGrad {
    fn name(&self) -> &'static str {
        "latent-conv2d-input-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = self.0.dims(&self.1, l2.shape())?;
        let dy = f32s(s1, l1, "convolution gradient")?;
        let w = f32s(s2, l2, "convolution gradient")?;
        let (k, n) = (d.c * d.kh * d.kw, d.h_out * d.w_out);
        let mut dx = vec![0f32; d.b * d.c * d.h * d.w];
        let mut col = vec![0f32; k * n];
        for bi in 0..d.b {
            let g = &dy[bi * d.o * n..(bi + 1) * d.o * n];
            // col (k x n) = Wᵀ (k x o, read from the o x k kernel) · dy_b (o x n).
            let wt = Mat {
                data: w,
                rows: k,
                cols: d.o,
                row_stride: 1,
                col_stride: k,
            };
            let gb = Mat {
                data: g,
                rows: d.o,
                cols: n,
                row_stride: n,
                col_stride: 1,
            };
            matmul(&mut col, false, wt, gb)?;
            fold(&d, &col, &mut dx[bi * d.c * d.h * d.w..(bi + 1) * d.c * d.h * d.w]);
        }
        Ok((CpuStorage::F32(dx), self.1.clone()))
    }
}

/// The transpose of [`unfold`] over a whole image: adds each column value back onto the input
/// pixel it was read from. Channels are independent, so they run in parallel.
fn fold(d: &Dims, col: &[f32], dx: &mut [f32]) {
    let n = d.h_out * d.w_out;
    let taps = d.kh * d.kw;
    dx.par_chunks_mut(d.h * d.w).enumerate().for_each(|(ci, plane)| {
        for t in 0..taps {
            let (ky, kx) = (t / d.kw, t % d.kw);
            let row = &col[(ci * taps + t) * n..(ci * taps + t + 1) * n];
            for yo in 0..d.h_out {
                let iy = (yo * d.s + ky) as isize - d.p as isize;
                if iy < 0 || iy >= d.h as isize {
                    continue;
                }
                let dst = &mut plane[iy as usize * d.w..(iy as usize + 1) * d.w];
                let src = &row[yo * d.w_out..(yo + 1) * d.w_out];
                for (xo, &v) in src.iter().enumerate() {
                    let ix = (xo * d.s + kx) as isize - d.p as isize;
                    if ix >= 0 && (ix as usize) < d.w {
                        dst[ix as usize] += v;
                    }
                }
            }
        }
    });
}

/// `(x, dy)` -> dW: `Σ_b dy_b · unfold(x_b)ᵀ`.
struct ConvKernelGrad(Geometry, Shape);

impl CustomOp2 for ConvKernelGrad {
    fn name(&self) -> &'static str {
        "latent-conv2d-kernel-grad"
    }
    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let d = self.0.dims(l1.shape(), &self.1)?;
        let x = f32s(s1, l1, "convolution gradient")?;
        let dy = f32s(s2, l2, "convolution gradient")?;
        let (k, n) = (d.c * d.kh * d.kw, d.h_out * d.w_out);
        let direct = d.kh == 1 && d.kw == 1 && d.s == 1 && d.p == 0;
        let mut dw = vec![0f32; d.o * k];
        let mut col = if direct { vec![] } else { vec![0f32; k * n] };
        for bi in 0..d.b {
            let xb = &x[bi * d.c * d.h * d.w..(bi + 1) * d.c * d.h * d.w];
            let cols: &[f32] = if direct {
                xb
            } else {
                unfold(&d, xb, 0, d.h_out, &mut col);
                &col
            };
            let g = &dy[bi * d.o * n..(bi + 1) * d.o * n];
            // dW (o x k) += dy_b (o x n) · unfold(x_b)ᵀ (n x k, read from the k x n buffer).
            let gb = Mat {
                data: g,
                rows: d.o,
                cols: n,
                row_stride: n,
                col_stride: 1,
            };
            let colt = Mat {
                data: cols,
                rows: n,
                cols: k,
                row_stride: 1,
                col_stride: n,
            };
            matmul(&mut dw, bi > 0, gb, colt)?;
        }
        Ok((CpuStorage::F32(dw), self.1.clone()))
    }
}

/// Group normalisation of `x` (b, c, ...) in `groups` groups with per-channel `weight` and
/// `bias`, differentiable in all three. f32 CPU tensors.
pub fn group_norm(x: &Tensor, groups: usize, eps: f64, weight: &Tensor, bias: &Tensor) -> Result<Tensor> {
    let c = x.dim(1)?;
    if groups == 0 || !c.is_multiple_of(groups) || weight.elem_count() != c || bias.elem_count() != c {
        candle_core::bail!("group norm: {c} channels, {groups} groups, {} weights", weight.elem_count());
    }
    x.contiguous()?
        .apply_op3(&weight.contiguous()?, &bias.contiguous()?, GroupNormOp { groups, eps: eps as f32 })
}

struct GroupNormOp {
    groups: usize,
    eps: f32,
}

impl GroupNormOp {
    fn plane(shape: &Shape) -> (usize, usize) {
        let dims = shape.dims();
        (dims[1], dims[2..].iter().product())
    }
}

impl CustomOp3 for GroupNormOp {
    fn name(&self) -> &'static str {
        "latent-train-group-norm"
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
        let (channels, plane) = Self::plane(l1.shape());
        let out = norm_forward(
            f32s(s1, l1, "group norm")?,
            Norm {
                channels,
                plane,
                groups: self.groups,
                eps: self.eps,
                weight: f32s(s2, l2, "group norm")?,
                bias: f32s(s3, l3, "group norm")?,
                silu: false,
            },
        );
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (channels, plane) = Self::plane(x.shape());
        let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let gs = dy.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let ws = w.to_vec1::<f32>()?;
        let per = channels / self.groups;
        let group_len = per * plane;
        // Per (image, group): dx, and this group's share of dγ and dβ.
        let parts: Vec<(Vec<f32>, Vec<f64>, Vec<f64>)> = xs
            .par_chunks(group_len)
            .zip(gs.par_chunks(group_len))
            .enumerate()
            .map(|(i, (xg, gg))| {
                let ch0 = (i % self.groups) * per;
                let (mean, var) = stats(xg);
                let rstd = 1.0 / (var + self.eps).sqrt();
                let (mut dgamma, mut dbeta) = (vec![0f64; per], vec![0f64; per]);
                // Means over the group of γ·dy and γ·dy·x̂.
                let (mut m1, mut m2) = (0f64, 0f64);
                for j in 0..per {
                    let gamma = ws[ch0 + j];
                    let (xr, gr) = (&xg[j * plane..(j + 1) * plane], &gg[j * plane..(j + 1) * plane]);
                    let (mut s_dy, mut s_dyx) = (0f64, 0f64);
                    for (&xv, &gv) in xr.iter().zip(gr) {
                        let xhat = f64::from((xv - mean) * rstd);
                        s_dy += f64::from(gv);
                        s_dyx += f64::from(gv) * xhat;
                    }
                    dbeta[j] = s_dy;
                    dgamma[j] = s_dyx;
                    m1 += f64::from(gamma) * s_dy;
                    m2 += f64::from(gamma) * s_dyx;
                }
                let n = group_len as f64;
                let (m1, m2) = ((m1 / n) as f32, (m2 / n) as f32);
                let mut dx = vec![0f32; group_len];
                for j in 0..per {
                    let gamma = ws[ch0 + j];
                    let rows = (j * plane)..((j + 1) * plane);
                    for ((d, &xv), &gv) in dx[rows.clone()].iter_mut().zip(&xg[rows.clone()]).zip(&gg[rows]) {
                        let xhat = (xv - mean) * rstd;
                        *d = (gamma * gv - m1 - xhat * m2) * rstd;
                    }
                }
                (dx, dgamma, dbeta)
            })
            .collect();
        let mut dx = Vec::with_capacity(xs.len());
        let (mut dgamma, mut dbeta) = (vec![0f64; channels], vec![0f64; channels]);
        for (i, (d, g, b)) in parts.into_iter().enumerate() {
            dx.extend(d);
            let ch0 = (i % self.groups) * per;
            for j in 0..per {
                dgamma[ch0 + j] += g[j];
                dbeta[ch0 + j] += b[j];
            }
        }
        let dev = x.device();
        let to = |v: Vec<f64>| Tensor::from_vec(v.into_iter().map(|x| x as f32).collect::<Vec<_>>(), channels, dev);
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(to(dgamma)?.reshape(w.shape())?),
            Some(to(dbeta)?.reshape(w.shape())?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn randn(shape: &[usize], seed: u64) -> Tensor {
        let mut rng = crate::rng::TorchRng::new(seed);
        let n: usize = shape.iter().product();
        Tensor::from_vec(rng.randn_f32(n), shape, &Device::Cpu).expect("tensor")
    }

    fn max_rel(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b)
            .and_then(|t| t.abs())
            .and_then(|t| t.max_all())
            .and_then(|t| t.to_scalar::<f32>());
        let m = b.abs().and_then(|t| t.max_all()).and_then(|t| t.to_scalar::<f32>());
        d.expect("diff") / m.expect("max").max(1e-12)
    }

    /// The gradients of `loss(op(inputs))` against those of candle's autograd through the
    /// reference operations, with a random projection as the loss so every output matters.
    fn check(inputs: &[Tensor], ours: impl Fn(&[Tensor]) -> Tensor, reference: impl Fn(&[Tensor]) -> Tensor) {
        let vars: Vec<Var> = inputs.iter().map(|t| Var::from_tensor(t).expect("var")).collect();
        let ts: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
        let (a, b) = (ours(&ts), reference(&ts));
        assert_eq!(a.dims(), b.dims());
        assert!(max_rel(&a, &b) < 1e-5, "forward differs: {}", max_rel(&a, &b));
        let proj = randn(a.dims(), 99);
        let ga = (a * &proj).and_then(|t| t.sum_all()).and_then(|t| t.backward()).expect("backward");
        let gb = (b * &proj).and_then(|t| t.sum_all()).and_then(|t| t.backward()).expect("backward");
        for (i, t) in ts.iter().enumerate() {
            let (x, y) = (ga.get(t).expect("ours"), gb.get(t).expect("reference"));
            let r = max_rel(x, y);
            assert!(r < 1e-4, "gradient of input {i} differs by {r} of its largest value");
        }
    }

    #[test]
    fn convolution_gradients_match_candles_autograd() {
        // 3x3 padded, strided downsampling, 1x1 and a kernel wider than the padding allows.
        for (shape, o, k, p, s) in [
            ([2, 3, 7, 6], 5, 3, 1, 1),
            ([2, 4, 8, 8], 3, 3, 1, 2),
            ([3, 6, 5, 5], 4, 1, 0, 1),
            ([1, 2, 6, 7], 3, 3, 0, 1),
        ] {
            let inputs = [randn(&shape, 1), randn(&[o, shape[1], k, k], 2), randn(&[o], 3)];
            check(
                &inputs,
                |t| conv2d(&t[0], &t[1], Some(&t[2]), p, s).expect("ours"),
                |t| {
                    t[0].conv2d(&t[1], p, s, 1, 1)
                        .and_then(|y| y.broadcast_add(&t[2].reshape((1, o, 1, 1))?))
                        .expect("candle")
                },
            );
            check(
                &inputs[..2],
                |t| conv2d(&t[0], &t[1], None, p, s).expect("ours"),
                |t| t[0].conv2d(&t[1], p, s, 1, 1).expect("candle"),
            );
        }
    }

    #[test]
    fn a_frozen_kernel_gets_no_gradient_and_the_input_the_same_one() {
        // LoRA training: the base kernel is a plain tensor, only the input carries gradients.
        let x = Var::from_tensor(&randn(&[2, 3, 6, 6], 7)).expect("var");
        let (w, b) = (randn(&[4, 3, 3, 3], 8), randn(&[4], 9));
        let proj = randn(&[2, 4, 6, 6], 10);
        let loss = |y: Tensor| (y * &proj).and_then(|t| t.sum_all()).expect("loss");
        let ours = loss(conv2d(x.as_tensor(), &w, Some(&b), 1, 1).expect("ours"))
            .backward()
            .expect("backward");
        let reference = x
            .as_tensor()
            .conv2d(&w, 1, 1, 1, 1)
            .and_then(|y| y.broadcast_add(&b.reshape((1, 4, 1, 1))?));
        let theirs = loss(reference.expect("candle")).backward().expect("backward");
        assert!(ours.get(&w).is_none() && ours.get(&b).is_none());
        let r = max_rel(ours.get(x.as_tensor()).expect("dx"), theirs.get(x.as_tensor()).expect("dx"));
        assert!(r < 1e-4, "{r}");
    }

    #[test]
    fn group_norm_gradients_match_candles_autograd() {
        for (shape, groups) in [(vec![2, 8, 5, 3], 4), (vec![3, 6, 4, 4], 6), (vec![2, 4, 9], 1)] {
            let c = shape[1];
            let inputs = [
                (randn(&shape, 4) * 3.0).and_then(|t| t + 1.5).expect("x"),
                (randn(&[c], 5) + 1.0).expect("w"),
                randn(&[c], 6),
            ];
            check(
                &inputs,
                |t| group_norm(&t[0], groups, 1e-5, &t[1], &t[2]).expect("ours"),
                |t| {
                    candle_nn::GroupNorm::new(t[1].clone(), t[2].clone(), c, groups, 1e-5)
                        .and_then(|n| candle_core::Module::forward(&n, &t[0]))
                        .expect("candle")
                },
            );
        }
    }
}

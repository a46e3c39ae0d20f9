//! Building blocks shared by the networks, built from canonical weight names.

use candle_core::{D, Module, Tensor};
use candle_nn::Conv2dConfig;

use super::weights::{Param, Weights};
use crate::error::{EngineError, Result};

/// `prefix.weight` (+ `prefix.bias` when present) as a linear layer.
pub fn linear(w: &Weights, prefix: &str) -> Result<Linear> {
    let weight = w.param(&format!("{prefix}.weight"))?;
    if weight.dims().len() != 2 {
        return Err(EngineError::ShapeMismatch {
            name: format!("{prefix}.weight"),
            found: weight.dims().to_vec(),
            expected: vec![0, 0],
        });
    }
    let bias = w.tensors.get(&format!("{prefix}.bias")).cloned();
    Ok(Linear { weight, bias })
}

/// A linear layer (`x W^T + b`), counted as [`Stage::Linear`](crate::profile::Stage) when
/// profiling. A quantized weight is dequantized for each call and dropped after it.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: Param,
    bias: Option<Tensor>,
}

impl Linear {
    /// The dtype the layer computes in.
    pub fn dtype(&self) -> candle_core::DType {
        self.weight.dtype()
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = crate::profile::span(crate::profile::Stage::Linear);
        let w = self.weight.tensor()?;
        if w.dtype() == candle_core::DType::BF16 && x.dtype() == candle_core::DType::F32 && x.device().is_cpu() && !x.track_op() {
            // bf16 weights on f32 activations (`--dtype bf16` on a CPU with AVX-512 BF16).
            let dims = x.dims();
            let k = *dims.last().expect("rank >= 1");
            let tokens = x.elem_count() / k.max(1);
            let flat = x.reshape((tokens, k))?.contiguous()?;
            let op = crate::kernels::cpu_bf16::Linear;
            let y = match &self.bias {
                Some(b) => flat.apply_op3_no_bwd(&w, &b.to_dtype(candle_core::DType::F32)?, &op)?,
                None => flat.apply_op2_no_bwd(&w, &op)?,
            };
            let mut out = dims.to_vec();
            *out.last_mut().expect("rank >= 1") = w.dim(0)?;
            return y.reshape(out);
        }
        candle_nn::Linear::new(w, self.bias.clone()).forward(x)
    }
}

/// A 2-D convolution; 1x1 kernels stored as matrices (linear `proj_in`) are reshaped.
pub fn conv2d(w: &Weights, prefix: &str, stride: usize) -> Result<Conv2d> {
    let k = w.shape(&format!("{prefix}.weight"))?.get(2).copied().unwrap_or(1);
    conv2d_with(w, prefix, k / 2, stride)
}

/// A 2-D convolution with explicit padding.
pub fn conv2d_with(w: &Weights, prefix: &str, padding: usize, stride: usize) -> Result<Conv2d> {
    let mut weight = w.param(&format!("{prefix}.weight"))?;
    if let &[o, i] = weight.dims() {
        weight = weight.reshaped(&[o, i, 1, 1])?;
    }
    if weight.dims().len() != 4 {
        return Err(EngineError::ShapeMismatch {
            name: format!("{prefix}.weight"),
            found: weight.dims().to_vec(),
            expected: vec![0, 0, 0, 0],
        });
    }
    let bias = w.tensors.get(&format!("{prefix}.bias")).cloned();
    let config = Conv2dConfig {
        padding,
        stride,
        ..Default::default()
    };
    Ok(Conv2d { weight, bias, config })
}

/// Bytes of unfolded input one convolution may build at once (candle convolves through
/// im2col: output pixels x kernel area x input channels). Bigger inputs run in bands of rows.
pub const CONV_UNFOLD_BUDGET: usize = 128 << 20;

/// A 2-D convolution that bounds its working memory: when the unfolded input would exceed
/// [`CONV_UNFOLD_BUDGET`], it convolves bands of output rows, each from its own rows of the
/// padded input, and joins them. The result is the same as one convolution (each output
/// pixel sums the same products); only the peak memory differs. A 512x512 SD VAE decode's
/// largest convolution would otherwise unfold 2.4 GB. A quantized weight is dequantized for
/// each call and dropped after it.
#[derive(Clone, Debug)]
pub struct Conv2d {
    weight: Param,
    bias: Option<Tensor>,
    config: Conv2dConfig,
}

impl Conv2d {
    /// The dtype the layer computes in.
    pub fn dtype(&self) -> candle_core::DType {
        self.weight.dtype()
    }
}

impl Module for Conv2d {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_within(x, CONV_UNFOLD_BUDGET)
    }
}

/// The convolution as shifted copies and one matrix product (training off the f32 CPU
/// path of [`crate::kernels::cpu_grad`]). candle's own convolution
/// differentiates through a transposed convolution that is very slow on the CPU; this
/// form's backward pass is two matrix products and copies (training is 5-10x faster).
fn forward_by_matmul(inner: &candle_nn::Conv2d, x: &Tensor) -> candle_core::Result<Tensor> {
    let cfg = inner.config();
    let w = inner.weight();
    let (o, c, kh, kw) = w.dims4()?;
    let (b, _, h, wd) = x.dims4()?;
    let (p, s) = (cfg.padding, cfg.stride.max(1));
    let h_out = (h + 2 * p).saturating_sub(kh) / s + 1;
    let w_out = (wd + 2 * p).saturating_sub(kw) / s + 1;
    // Pad, plus `s` spare rows/columns so every strided window can be cut to s * n.
    let xp = x.pad_with_zeros(2, p, p + s)?.pad_with_zeros(3, p, p + s)?;
    let mut cols = Vec::with_capacity(kh * kw);
    for ky in 0..kh {
        for kx in 0..kw {
            let win = xp.narrow(2, ky, s * h_out)?.narrow(3, kx, s * w_out)?;
            let win = if s == 1 {
                win
            } else {
                win.contiguous()?
                    .reshape((b, c, h_out, s, w_out, s))?
                    .narrow(3, 0, 1)?
                    .narrow(5, 0, 1)?
                    .reshape((b, c, h_out, w_out))?
            };
            cols.push(win);
        }
    }
    let col = Tensor::stack(&cols, 2)?.reshape((b, c * kh * kw, h_out * w_out))?;
    let y = w.reshape((o, c * kh * kw))?.broadcast_matmul(&col)?;
    let y = match inner.bias() {
        Some(bias) => y.broadcast_add(&bias.reshape((1, o, 1))?)?,
        None => y,
    };
    y.reshape((b, o, h_out, w_out))
}

/// candle's convolution with this padding, plus the bias: on CUDA (inference) the bias is
/// added by the engine's per-channel kernel instead of candle's broadcasting add.
fn conv_plus_bias(inner: &candle_nn::Conv2d, x: &Tensor, padding: usize) -> candle_core::Result<Tensor> {
    let cfg = inner.config();
    #[cfg(feature = "cuda")]
    if crate::kernels::cuda_ops::applies(x) && !inner.weight().track_op() {
        let y = x.conv2d(inner.weight(), padding, cfg.stride, cfg.dilation, cfg.groups)?;
        return match inner.bias() {
            Some(bias) => {
                let (_, _, h, w) = y.dims4()?;
                crate::kernels::cuda_ops::add_per_channel(&y, bias, h * w)
            }
            None => Ok(y),
        };
    }
    if padding == cfg.padding {
        return inner.forward(x);
    }
    candle_nn::Conv2d::new(inner.weight().clone(), inner.bias().cloned(), Conv2dConfig { padding, ..*cfg }).forward(x)
}

impl Conv2d {
    /// The convolution with at most `budget` bytes of unfolded input at a time.
    pub fn forward_within(&self, x: &Tensor, budget: usize) -> candle_core::Result<Tensor> {
        let cfg = &self.config;
        let wide = self.weight.dims().get(2..4).is_some_and(|k| k != [1, 1]);
        let _span = crate::profile::span(if wide {
            crate::profile::Stage::Conv
        } else {
            crate::profile::Stage::Conv1x1
        });
        let weight = self.weight.tensor()?;
        let inner = candle_nn::Conv2d::new(weight, self.bias.clone(), *cfg);
        let weight = inner.weight();
        if (x.track_op() || weight.track_op()) && cfg.groups == 1 && cfg.dilation == 1 {
            if crate::kernels::cpu_grad::supports(x) && crate::kernels::cpu_grad::supports(weight) {
                return crate::kernels::cpu_grad::conv2d(x, weight, inner.bias(), cfg.padding, cfg.stride);
            }
            return forward_by_matmul(&inner, x);
        }
        if cfg.groups == 1 && cfg.dilation == 1 && crate::kernels::cpu_conv::supports(x) {
            let conv = crate::kernels::cpu_conv::CpuConv {
                padding: cfg.padding,
                stride: cfg.stride,
                budget,
            };
            return conv.forward(x, weight, inner.bias());
        }
        let (b, c_in, h, w) = x.dims4()?;
        let (k_h, k_w) = (weight.dim(2)?, weight.dim(3)?);
        if k_h == 1 && k_w == 1 {
            return conv_plus_bias(&inner, x, cfg.padding);
        }
        let (pad, stride) = (cfg.padding, cfg.stride.max(1));
        let h_out = (h + 2 * pad).saturating_sub(k_h) / stride + 1;
        let w_out = (w + 2 * pad).saturating_sub(k_w) / stride + 1;
        let row_bytes = b * w_out * k_h * k_w * c_in * x.dtype().size_in_bytes();
        let rows_per_band = (budget / row_bytes.max(1)).max(1);
        if rows_per_band >= h_out || cfg.groups != 1 || cfg.dilation != 1 {
            return conv_plus_bias(&inner, x, cfg.padding);
        }
        let padded = x.pad_with_zeros(2, pad, pad)?.pad_with_zeros(3, pad, pad)?;
        let mut bands = vec![];
        let mut r0 = 0;
        while r0 < h_out {
            let r1 = (r0 + rows_per_band).min(h_out);
            let first = r0 * stride;
            let rows = (r1 - 1) * stride + k_h - first;
            bands.push(conv_plus_bias(&inner, &padded.narrow(2, first, rows)?, 0)?);
            r0 = r1;
        }
        Tensor::cat(&bands, 2)
    }
}

/// Group normalisation: the fused CPU kernel of [`crate::kernels::cpu_norm`] for f32 inference, on
/// CUDA (inference, `cuda` builds) statistics by candle and one apply kernel of
/// [`crate::kernels::cuda_ops`], the differentiable kernel of [`crate::kernels::cpu_grad`] when training on
/// the CPU in f32, candle's (tensor operations, differentiable) otherwise.
#[derive(Clone, Debug)]
pub struct GroupNorm {
    inner: candle_nn::GroupNorm,
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    fn fused(&self, x: &Tensor, silu: bool) -> candle_core::Result<Option<Tensor>> {
        let tracked = x.track_op() || self.weight.track_op() || self.bias.track_op();
        #[cfg(feature = "cuda")]
        if !tracked && x.rank() >= 3 && crate::kernels::cuda_ops::applies(x) && x.dim(1)? == self.weight.elem_count() {
            return Ok(Some(crate::kernels::cuda_ops::group_norm(
                x,
                self.groups,
                self.eps,
                &self.weight,
                &self.bias,
                silu,
            )?));
        }
        if tracked && x.rank() >= 3 && crate::kernels::cpu_grad::supports(x) && crate::kernels::cpu_grad::supports(&self.weight) {
            let y = crate::kernels::cpu_grad::group_norm(x, self.groups, self.eps, &self.weight, &self.bias)?;
            return Ok(Some(if silu { y.silu()? } else { y }));
        }
        // f16 activations (`--dtype f16` on the CPU) take the same f32 kernel through one f32
        // copy: candle's f16 group norm makes several f32 temporaries of the whole tensor,
        // which set the peak of a 512x512 VAE decode.
        let half = x.dtype() == candle_core::DType::F16;
        if tracked || !x.device().is_cpu() || !(x.dtype() == candle_core::DType::F32 || half) || x.rank() < 2 {
            return Ok(None);
        }
        let dims = x.dims();
        let channels = dims[1];
        let plane: usize = dims[2..].iter().product();
        if channels != self.weight.elem_count() || !channels.is_multiple_of(self.groups) {
            return Ok(None);
        }
        let data = if half {
            x.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?
        } else {
            x.flatten_all()?.to_vec1::<f32>()?
        };
        let (weight, bias) = (
            self.weight.to_dtype(candle_core::DType::F32)?,
            self.bias.to_dtype(candle_core::DType::F32)?,
        );
        let norm = crate::kernels::cpu_norm::Norm {
            channels,
            plane,
            groups: self.groups,
            eps: self.eps as f32,
            weight: &weight.to_vec1::<f32>()?,
            bias: &bias.to_vec1::<f32>()?,
            silu,
        };
        let out = crate::kernels::cpu_norm::group_norm(&data, norm);
        drop(data);
        let y = Tensor::from_vec(out, dims, x.device())?;
        Ok(Some(if half { y.to_dtype(candle_core::DType::F16)? } else { y }))
    }

    /// `silu(group_norm(x))` in one pass where the fused kernel applies.
    pub fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = crate::profile::span(crate::profile::Stage::Norm);
        match self.fused(x, true)? {
            Some(y) => Ok(y),
            None => self.inner.forward(x)?.silu(),
        }
    }
}

impl Module for GroupNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = crate::profile::span(crate::profile::Stage::Norm);
        match self.fused(x, false)? {
            Some(y) => Ok(y),
            None => self.inner.forward(x),
        }
    }
}

/// Group normalisation over `channels` with `groups` groups.
pub fn group_norm(w: &Weights, prefix: &str, groups: usize, eps: f64) -> Result<GroupNorm> {
    let weight = w.get(&format!("{prefix}.weight"))?;
    let bias = w.get(&format!("{prefix}.bias"))?;
    let channels = weight.dim(0)?;
    if groups == 0 || channels % groups != 0 {
        return Err(EngineError::UnknownArchitecture(format!(
            "{prefix}: {channels} channels cannot form {groups} normalisation groups (set norm_num_groups in the model's config)"
        )));
    }
    Ok(GroupNorm {
        inner: candle_nn::GroupNorm::new(weight.clone(), bias.clone(), channels, groups, eps)?,
        weight,
        bias,
        groups,
        eps,
    })
}

/// Layer normalisation over the last dimension.
pub fn layer_norm(w: &Weights, prefix: &str, eps: f64) -> Result<LayerNorm> {
    let weight = w.get(&format!("{prefix}.weight"))?;
    let bias = w.get(&format!("{prefix}.bias"))?;
    Ok(LayerNorm {
        inner: candle_nn::LayerNorm::new(weight.clone(), bias.clone(), eps),
        weight,
        bias,
        eps,
    })
}

/// Layer normalisation: candle's fused kernel for inference, plain tensor operations when
/// gradients flow (training), since the fused kernel has no backward pass.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    inner: candle_nn::LayerNorm,
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl Module for LayerNorm {
    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let _span = crate::profile::span(crate::profile::Stage::Norm);
        if x.track_op() || self.weight.track_op() {
            candle_nn::ops::layer_norm_slow(x, &self.weight, &self.bias, self.eps as f32)
        } else {
            self.inner.forward(x)
        }
    }
}

/// GEGLU: the last dimension's first half times the GELU (erf form) of its second half. On
/// the CPU in f32 (inference) one pass of [`crate::kernels::cpu_act`]; tensor operations
/// otherwise.
pub fn geglu(h: &Tensor) -> Result<Tensor> {
    let half = h.dim(D::Minus1)? / 2;
    if h.device().is_cpu() && h.dtype() == candle_core::DType::F32 && !h.track_op() {
        let mut dims = h.dims().to_vec();
        *dims.last_mut().expect("rank >= 1") = half;
        let x = h.contiguous()?;
        let out = crate::kernels::cpu_act::geglu(&x.flatten_all()?.to_vec1::<f32>()?, half);
        return Ok(Tensor::from_vec(out, dims, h.device())?);
    }
    let (a, gate) = (h.narrow(D::Minus1, 0, half)?, h.narrow(D::Minus1, half, half)?);
    Ok((a * gate.gelu_erf()?)?)
}

/// Score elements one chunk of queries may hold at once (64 MiB of f32): bounds the memory
/// of large attentions (a 512x512 SD 1.5 image has 4096 tokens: 1 GiB of scores at once).
const SCORE_BUDGET: usize = 16 << 20;

/// Scaled dot-product attention over `[batch, tokens, heads * head_dim]` inputs; `causal`
/// masks keys after each query (CLIP).
///
/// On the CPU, narrow heads (up to 32 wide: the small models this studio ships and tests
/// with) run the fused row-wise kernel of [`crate::kernels::cpu_attention`], wide heads (SD's 40-160) its
/// blocked matrix-product kernel; training (gradients) uses candle's matmul/softmax in query
/// chunks; the full score matrix never exists in any case. The softmax runs in f32 whatever
/// the model dtype (f16 scores overflow on large token counts).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    attention_with_budget(q, k, v, heads, causal, SCORE_BUDGET, true, false)
}

/// [`attention`] for layers whose weights are bf16 (`--dtype bf16`): on a CPU with AVX-512
/// BF16 both products run in bf16 with f32 sums ([`crate::kernels::cpu_attention::attention_blocked_bf16`]),
/// as PyTorch's bf16 attention does; elsewhere exactly [`attention`].
pub fn attention_bf16(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    attention_with_budget(q, k, v, heads, causal, SCORE_BUDGET, true, true)
}

/// [`attention`] without the fused GPU kernel (what a build without `flash-attn` runs):
/// `bench attention` compares the two.
pub fn attention_unfused(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, causal: bool) -> Result<Tensor> {
    attention_with_budget(q, k, v, heads, causal, SCORE_BUDGET, false, false)
}

/// Whether [`attention`] takes the fused GPU kernel for these inputs.
pub fn attention_is_fused(q: &Tensor, heads: usize, causal: bool) -> bool {
    let _ = (q, heads, causal);
    #[cfg(feature = "flash-attn")]
    if !causal && let Ok(c) = q.dim(2) {
        return flash::supported(q, c / heads);
    }
    false
}

#[cfg_attr(not(feature = "flash-attn"), allow(unused_variables))]
#[allow(clippy::too_many_arguments)]
fn attention_with_budget(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    causal: bool,
    budget: usize,
    fused: bool,
    bf16: bool,
) -> Result<Tensor> {
    let _span = crate::profile::span(crate::profile::Stage::Attention);
    let (b, n, c) = q.dims3()?;
    let m = k.dim(1)?;
    let d = c / heads;
    // The fused kernel has no backward pass: when gradients flow (training), take the
    // tensor-operation path.
    let training = q.track_op() || k.track_op() || v.track_op();
    if q.device().is_cpu() && !training {
        let (dtype, device) = (q.dtype(), q.device().clone());
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1()?) };
        let dims = crate::kernels::cpu_attention::Dims {
            batch: b,
            queries: n,
            keys: m,
            heads,
            dim: d,
            causal,
        };
        let (q, k, v) = (flat(q)?, flat(k)?, flat(v)?);
        let out = if bf16 && d > 32 && crate::kernels::cpu_attention::bf16_applies(&dims) {
            crate::kernels::cpu_attention::attention_blocked_bf16(&q, &k, &v, dims)
        } else if d <= 32 {
            crate::kernels::cpu_attention::attention(&q, &k, &v, dims)
        } else {
            crate::kernels::cpu_attention::attention_blocked(&q, &k, &v, dims)
        };
        return Ok(Tensor::from_vec(out, (b, n, c), &device)?.to_dtype(dtype)?);
    }
    #[cfg(feature = "flash-attn")]
    if fused && !training && !causal && flash::supported(q, d) {
        match flash::attention(q, k, v, heads) {
            Ok(out) => return Ok(out),
            Err(e) => flash::disable(&e),
        }
    }
    let split = |t: &Tensor, len: usize| -> Result<Tensor> { Ok(t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous()?) };
    if !q.device().is_cpu() && !training {
        return attention_on_gpu(split(q, n)?, split(k, m)?, split(v, m)?, causal, GPU_SCORE_BUDGET);
    }
    let (qh, kh, vh) = (split(q, n)?, split(k, m)?, split(v, m)?);
    let kt = kh.t()?.contiguous()?;
    let dtype = q.dtype();
    let scale = 1.0 / (d as f64).sqrt();
    let chunk = (budget / (b * heads * m).max(1)).clamp(1, n);
    let mut outs = vec![];
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let qc = qh.narrow(2, start, len)?;
        let scores = (qc.matmul(&kt)? * scale)?.to_dtype(candle_core::DType::F32)?;
        let scores = if causal {
            let mask: Vec<f32> = (start..start + len)
                .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            scores.broadcast_add(&Tensor::from_vec(mask, (len, m), scores.device())?)?
        } else {
            scores
        };
        let probs = if training {
            candle_nn::ops::softmax(&scores, D::Minus1)?
        } else {
            candle_nn::ops::softmax_last_dim(&scores)?
        }
        .to_dtype(dtype)?;
        outs.push(probs.matmul(&vh)?);
        start += len;
    }
    let out = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 2)? };
    Ok(out.transpose(1, 2)?.reshape((b, n, c))?)
}

/// Fused attention on CUDA (candle-flash-attn's FlashAttention-2 kernels): scores never leave
/// the chip and one launch covers all heads. Used for f16 models whose head size has a compiled
/// kernel (packaging/build-cuda.sh builds sizes up to 64, 96 and 160: SD 1.x's 40/80/160,
/// SD 2.x and SDXL's 64); anything else, and `LATENT_STUDIO_FLASH_ATTN=0`, takes
/// [`attention_on_gpu`].
#[cfg(feature = "flash-attn")]
mod flash {
    use super::*;
    use std::sync::atomic::{AtomicU8, Ordering};

    /// 0: not decided yet, 1: on, 2: off (by the environment or after a failure).
    static STATE: AtomicU8 = AtomicU8::new(0);

    pub(super) fn supported(q: &Tensor, d: usize) -> bool {
        let state = match STATE.load(Ordering::Relaxed) {
            0 => {
                let off = std::env::var("LATENT_STUDIO_FLASH_ATTN").is_ok_and(|v| v == "0");
                let s = if off { 2 } else { 1 };
                STATE.store(s, Ordering::Relaxed);
                s
            }
            s => s,
        };
        state == 1 && q.device().is_cuda() && q.dtype() == candle_core::DType::F16 && d % 8 == 0 && (d <= 96 || (129..=160).contains(&d))
    }

    pub(super) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize) -> Result<Tensor> {
        let (b, n, c) = q.dims3()?;
        let m = k.dim(1)?;
        let d = c / heads;
        // `[batch, tokens, heads * d]` is already the kernel's `[batch, tokens, heads, d]`.
        let four = |t: &Tensor, len: usize| -> Result<Tensor> { Ok(t.contiguous()?.reshape((b, len, heads, d))?) };
        let out = candle_flash_attn::flash_attn(&four(q, n)?, &four(k, m)?, &four(v, m)?, (1.0 / (d as f64).sqrt()) as f32, false)?;
        Ok(out.reshape((b, n, c))?)
    }

    /// A kernel that fails once (an unsupported GPU) is not tried again in this process.
    pub(super) fn disable(e: &EngineError) {
        if STATE.swap(2, Ordering::Relaxed) == 1 {
            eprintln!("flash attention unavailable, using the chunked path: {e}");
        }
    }
}

/// Score elements one chunk of queries may hold on a GPU (1 GiB in f16): one chunk for an
/// SDXL 1024x1024 image's 4096 tokens at batch 2 would be 335 M.
const GPU_SCORE_BUDGET: usize = 512 << 20;

/// Attention on a GPU over `[batch, heads, tokens, head_dim]` parts: the scale is folded into
/// the queries (a pass over n x d values instead of n x m scores), the keys are read
/// transposed by the matrix product (no copy), and the scores stay in the model's dtype:
/// candle's CUDA softmax accumulates in f32, and f16 scores of scaled queries stay far from
/// f16's range. Chunks are large, since each one is several kernel launches. (Profiled on an
/// H200: the f32 round trip, the separate scaling and small chunks were 40% of an SDXL UNet
/// step's GPU time.)
fn attention_on_gpu(qh: Tensor, kh: Tensor, vh: Tensor, causal: bool, budget: usize) -> Result<Tensor> {
    let (b, heads, n, d) = qh.dims4()?;
    let m = kh.dim(2)?;
    let qh = (qh * (1.0 / (d as f64).sqrt()))?;
    let kt = kh.t()?;
    let chunk = (budget / (b * heads * m).max(1)).clamp(1, n);
    let mut outs = vec![];
    let mut start = 0;
    while start < n {
        let len = chunk.min(n - start);
        let scores = qh.narrow(2, start, len)?.matmul(&kt)?;
        let scores = if causal {
            let mask: Vec<f32> = (start..start + len)
                .flat_map(|i| (0..m).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
                .collect();
            let mask = Tensor::from_vec(mask, (len, m), scores.device())?.to_dtype(scores.dtype())?;
            scores.broadcast_add(&mask)?
        } else {
            scores
        };
        outs.push(candle_nn::ops::softmax_last_dim(&scores)?.matmul(&vh)?);
        start += len;
    }
    let out = if outs.len() == 1 { outs.remove(0) } else { Tensor::cat(&outs, 2)? };
    Ok(out.transpose(1, 2)?.reshape((b, n, heads * d))?)
}

/// Applies a module, mapping candle's error into ours.
pub fn apply<M: Module>(m: &M, x: &Tensor) -> Result<Tensor> {
    Ok(m.forward(x)?)
}

/// `x * sigmoid(1.702 x)`: OpenAI CLIP's activation.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    Ok((x * candle_nn::ops::sigmoid(&(x * 1.702)?)?)?)
}

/// Mean over the last dimension (used by tests and previews).
pub fn mean_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.mean_keepdim(D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Our convolutions (the CPU kernel in bands of any size, and the training form) give
    /// candle's plain convolution's output: 3x3 and 1x1 kernels, padding 0 and 1, stride 1
    /// and 2, with and without bias, f32 and f16.
    #[test]
    fn banded_convolution_matches_the_plain_one() {
        let dev = Device::Cpu;
        for (c_in, c_out, h, w, k, stride, padding, with_bias) in [
            (5usize, 3usize, 23usize, 17usize, 3usize, 1usize, 1usize, true),
            (4, 6, 20, 20, 3, 2, 1, true),
            (3, 2, 9, 11, 3, 1, 1, false),
            (6, 4, 13, 10, 3, 2, 0, true),
            (8, 5, 16, 16, 1, 1, 0, true),
            (8, 5, 7, 9, 1, 1, 0, false),
            (3, 4, 7, 9, 1, 2, 0, true),
            (2, 3, 5, 4, 3, 1, 2, true),
        ] {
            let mut rng = crate::rng::TorchRng::new(3);
            let x = Tensor::from_vec(rng.randn_f32(2 * c_in * h * w), (2, c_in, h, w), &dev).expect("x");
            let wt = Tensor::from_vec(rng.randn_f32(c_out * c_in * k * k), (c_out, c_in, k, k), &dev).expect("w");
            let bias = Tensor::from_vec(rng.randn_f32(c_out), c_out, &dev).expect("b");
            let config = Conv2dConfig {
                padding,
                stride,
                ..Default::default()
            };
            let bias = with_bias.then_some(bias);
            let plain_conv = candle_nn::Conv2d::new(wt.clone(), bias.clone(), config);
            let conv = Conv2d {
                weight: Param::Dense(wt.clone()),
                bias: bias.clone(),
                config,
            };
            let case = format!("c_in {c_in} k {k} stride {stride} padding {padding} bias {with_bias}");
            let plain = plain_conv.forward(&x).expect("plain");
            let max_diff = |a: &Tensor| -> f32 {
                assert_eq!(a.dims(), plain.dims(), "{case}");
                let a = a.to_dtype(candle_core::DType::F32).expect("f32");
                (&a - &plain)
                    .expect("sub")
                    .abs()
                    .expect("abs")
                    .max_all()
                    .expect("max")
                    .to_scalar::<f32>()
                    .expect("s")
            };
            let d = max_diff(&forward_by_matmul(&plain_conv, &x).expect("matmul form"));
            assert!(d <= 1e-4, "training form, {case}: max diff {d}");
            for budget in [1, 2 * w * k * k * c_in * 4 * 3, usize::MAX] {
                let d = max_diff(&conv.forward_within(&x, budget).expect("banded"));
                assert!(d <= 1e-5, "{case} budget {budget}: max diff {d}");
            }
            // f16: the kernel accumulates in f16 like candle's, so compare loosely.
            let half = |t: &Tensor| t.to_dtype(candle_core::DType::F16).expect("f16");
            let conv16 = Conv2d {
                weight: Param::Dense(half(&wt)),
                bias: bias.as_ref().map(half),
                config,
            };
            let scale = plain.abs().expect("abs").max_all().expect("max").to_scalar::<f32>().expect("s");
            let d = max_diff(&conv16.forward_within(&half(&x), 1).expect("f16"));
            assert!(d <= 2e-2 * scale.max(1.0), "f16 {case}: max diff {d} of {scale}");
        }
    }

    /// The fused group norm (and group norm + SiLU) gives candle's result.
    #[test]
    fn fused_group_norm_matches_candle() {
        let dev = Device::Cpu;
        for (b, c, h, w, groups) in [(2usize, 8usize, 5usize, 7usize, 4usize), (1, 32, 16, 16, 32), (2, 12, 3, 3, 3)] {
            let mut rng = crate::rng::TorchRng::new(11);
            let x = Tensor::from_vec(rng.randn_f32(b * c * h * w), (b, c, h, w), &dev)
                .expect("x")
                .affine(3.0, 1.5)
                .expect("x");
            let weight = Tensor::from_vec(rng.randn_f32(c), c, &dev).expect("w");
            let bias = Tensor::from_vec(rng.randn_f32(c), c, &dev).expect("b");
            let norm = GroupNorm {
                inner: candle_nn::GroupNorm::new(weight.clone(), bias.clone(), c, groups, 1e-5).expect("gn"),
                weight,
                bias,
                groups,
                eps: 1e-5,
            };
            let want = norm.inner.forward(&x).expect("candle");
            let worst = |a: &Tensor, b: &Tensor| -> f32 {
                (a - b)
                    .and_then(|d| d.abs())
                    .and_then(|d| d.max_all())
                    .and_then(|d| d.to_scalar::<f32>())
                    .expect("diff")
            };
            assert!(worst(&norm.forward(&x).expect("fused"), &want) < 1e-5, "{b}x{c}x{h}x{w}/{groups}");
            let want = want.silu().expect("silu");
            assert!(
                worst(&norm.forward_silu(&x).expect("fused silu"), &want) < 1e-5,
                "silu {b}x{c}x{h}x{w}/{groups}"
            );
            // f16 activations go through the same kernel and come back f16, within f16's
            // rounding of candle's f32 result on the same (f16-rounded) input.
            let xh = x.to_dtype(candle_core::DType::F16).expect("f16");
            let f32s = |t: &Tensor| t.to_dtype(candle_core::DType::F32).expect("f32");
            let got = norm.forward_silu(&xh).expect("fused f16");
            assert_eq!(got.dtype(), candle_core::DType::F16);
            let want = norm.inner.forward(&f32s(&xh)).and_then(|y| y.silu()).expect("candle");
            assert!(worst(&f32s(&got), &want) < 1e-2, "f16 {b}x{c}x{h}x{w}/{groups}");
        }
    }

    /// The chunked matmul path (wide heads) and the fused kernel agree, masks included.
    #[test]
    fn chunked_attention_matches_the_fused_kernel() {
        let dev = Device::Cpu;
        for (heads, d, n, m, causal) in [
            (1usize, 40usize, 300usize, 300usize, false),
            (2, 40, 77, 77, true),
            (2, 48, 120, 77, false),
        ] {
            let mut rng = crate::rng::TorchRng::new(9);
            let mk = |len: usize, rng: &mut crate::rng::TorchRng| {
                Tensor::from_vec(rng.randn_f32(2 * len * heads * d), (2, len, heads * d), &dev).expect("t")
            };
            let (q, k, v) = (mk(n, &mut rng), mk(m, &mut rng), mk(m, &mut rng));
            // A variable query makes it the training path (candle ops in query chunks).
            let q_var = candle_core::Var::from_tensor(&q).expect("var");
            let chunked = attention_with_budget(q_var.as_tensor(), &k, &v, heads, causal, 2 * heads * m * 7, true, false).expect("chunked");
            let blocked = attention_with_budget(&q, &k, &v, heads, causal, 2 * heads * m * 7, true, false).expect("blocked");
            let flat = |t: &Tensor| t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("vec");
            let dims = crate::kernels::cpu_attention::Dims {
                batch: 2,
                queries: n,
                keys: m,
                heads,
                dim: d,
                causal,
            };
            let fused = crate::kernels::cpu_attention::attention(&flat(&q), &flat(&k), &flat(&v), dims);
            let worst = flat(&chunked).iter().zip(&fused).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "{heads}x{d} {n}->{m}: {worst}");
            let worst = flat(&blocked).iter().zip(&fused).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "blocked {heads}x{d} {n}->{m}: {worst}");
            // The GPU form (scale folded into q, transposed keys, scores in the model dtype)
            // computes the same, here on the CPU in f32.
            let split = |t: &Tensor, len: usize| {
                t.reshape((2, len, heads, d))
                    .and_then(|t| t.transpose(1, 2))
                    .and_then(|t| t.contiguous())
                    .expect("split")
            };
            let gpu = attention_on_gpu(split(&q, n), split(&k, m), split(&v, m), causal, 2 * heads * m * 7).expect("gpu form");
            let worst = flat(&gpu).iter().zip(&fused).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(worst < 1e-5, "GPU form {heads}x{d} {n}->{m}: {worst}");
        }
    }
}

//! Building blocks shared by the networks, built from canonical weight names.

use candle_core::{D, Module, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, GroupNorm, LayerNorm, Linear};

use super::checkpoint::Weights;
use crate::error::{EngineError, Result};

/// `prefix.weight` (+ `prefix.bias` when present) as a linear layer.
pub fn linear(w: &Weights, prefix: &str) -> Result<Linear> {
    let weight = w.get(&format!("{prefix}.weight"))?.clone();
    if weight.rank() != 2 {
        return Err(EngineError::ShapeMismatch {
            name: format!("{prefix}.weight"),
            found: weight.dims().to_vec(),
            expected: vec![0, 0],
        });
    }
    let bias = w.tensors.get(&format!("{prefix}.bias")).cloned();
    Ok(Linear::new(weight, bias))
}

/// A 2-D convolution; 1x1 kernels stored as matrices (linear `proj_in`) are reshaped.
pub fn conv2d(w: &Weights, prefix: &str, stride: usize) -> Result<Conv2d> {
    let mut weight = w.get(&format!("{prefix}.weight"))?.clone();
    if weight.rank() == 2 {
        let (o, i) = weight.dims2()?;
        weight = weight.reshape((o, i, 1, 1))?;
    }
    if weight.rank() != 4 {
        return Err(EngineError::ShapeMismatch {
            name: format!("{prefix}.weight"),
            found: weight.dims().to_vec(),
            expected: vec![0, 0, 0, 0],
        });
    }
    let k = weight.dim(2)?;
    let bias = w.tensors.get(&format!("{prefix}.bias")).cloned();
    let config = Conv2dConfig {
        padding: k / 2,
        stride,
        ..Default::default()
    };
    Ok(Conv2d::new(weight, bias, config))
}

/// Group normalisation over `channels` with `groups` groups.
pub fn group_norm(w: &Weights, prefix: &str, groups: usize, eps: f64) -> Result<GroupNorm> {
    let weight = w.get(&format!("{prefix}.weight"))?.clone();
    let bias = w.get(&format!("{prefix}.bias"))?.clone();
    let channels = weight.dim(0)?;
    if groups == 0 || channels % groups != 0 {
        return Err(EngineError::UnknownArchitecture(format!(
            "{prefix}: {channels} channels cannot form {groups} normalisation groups (set norm_num_groups in the model's config)"
        )));
    }
    Ok(GroupNorm::new(weight, bias, channels, groups, eps)?)
}

/// Layer normalisation over the last dimension.
pub fn layer_norm(w: &Weights, prefix: &str, eps: f64) -> Result<LayerNorm> {
    let weight = w.get(&format!("{prefix}.weight"))?.clone();
    let bias = w.get(&format!("{prefix}.bias"))?.clone();
    Ok(LayerNorm::new(weight, bias, eps))
}

/// Scaled dot-product attention over `[batch, tokens, heads * head_dim]` inputs.
///
/// Softmax runs in f32 whatever the model dtype: f16 scores overflow on large token counts.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, heads: usize, mask: Option<&Tensor>) -> Result<Tensor> {
    let (b, n, c) = q.dims3()?;
    let m = k.dim(1)?;
    let d = c / heads;
    let split = |t: &Tensor, len: usize| -> Result<Tensor> { Ok(t.reshape((b, len, heads, d))?.transpose(1, 2)?.contiguous()?) };
    let (q, k, v) = (split(q, n)?, split(k, m)?, split(v, m)?);
    let dtype = q.dtype();
    let scale = 1.0 / (d as f64).sqrt();
    let scores = (q.matmul(&k.t()?)? * scale)?.to_dtype(candle_core::DType::F32)?;
    let scores = match mask {
        Some(mask) => scores.broadcast_add(mask)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores)?.to_dtype(dtype)?;
    let out = probs.matmul(&v)?;
    Ok(out.transpose(1, 2)?.reshape((b, n, c))?)
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

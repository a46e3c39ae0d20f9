//! CLIP text transformer (OpenAI CLIP and OpenCLIP, both in Hugging Face naming).
//!
//! Written here rather than taken from candle-transformers: the engine needs batched prompts
//! (candle's mask broadcast failed with batch 2), hidden states of any layer (clip skip, SDXL's
//! penultimate layer), and the pooled output of `CLIPTextModelWithProjection`.

use candle_core::{DType, IndexOp, Module, Tensor};

use super::config::{Activation, TextConfig};
use super::layers::{LayerNorm, Linear, attention, layer_norm, linear, quick_gelu};
use super::weights::Weights;
use crate::error::{EngineError, Result};

struct Layer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// One text encoder.
pub struct ClipText {
    pub config: TextConfig,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<Layer>,
    final_ln: LayerNorm,
    projection: Option<Linear>,
}

/// What the pipeline asks of an encoder.
#[derive(Clone, Copy, Debug)]
pub struct TextRequest {
    /// Hidden state counted from the end: 1 = last layer's output, 2 = the one before, ...
    pub layer_from_end: usize,
    /// Apply the final layer norm to that hidden state (SD 1/2 do, SDXL does not).
    pub final_norm: bool,
    /// Also compute the pooled, projected embedding at the end token (SDXL's second encoder).
    pub pooled: bool,
}

impl ClipText {
    /// Builds the encoder from `config.prefix` weights.
    pub fn new(w: &Weights, config: &TextConfig) -> Result<Self> {
        let p = config.prefix;
        let mut layers = vec![];
        for i in 0..config.layers {
            let l = format!("{p}encoder.layers.{i}");
            layers.push(Layer {
                ln1: layer_norm(w, &format!("{l}.layer_norm1"), 1e-5)?,
                q: linear(w, &format!("{l}.self_attn.q_proj"))?,
                k: linear(w, &format!("{l}.self_attn.k_proj"))?,
                v: linear(w, &format!("{l}.self_attn.v_proj"))?,
                out: linear(w, &format!("{l}.self_attn.out_proj"))?,
                ln2: layer_norm(w, &format!("{l}.layer_norm2"), 1e-5)?,
                fc1: linear(w, &format!("{l}.mlp.fc1"))?,
                fc2: linear(w, &format!("{l}.mlp.fc2"))?,
            });
        }
        let projection = if config.projection.is_some() {
            Some(linear(w, &format!("{p}text_projection"))?)
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            token_embedding: w.get(&format!("{p}embeddings.token_embedding.weight"))?.clone(),
            position_embedding: w.get(&format!("{p}embeddings.position_embedding.weight"))?.clone(),
            layers,
            final_ln: layer_norm(w, &format!("{p}final_layer_norm"), 1e-5)?,
            projection,
        })
    }

    /// Encodes `ids` (`[batch][tokens]`); returns the requested hidden state `[b, t, hidden]`
    /// and, if asked, the pooled projection `[b, proj]` taken at each row's first end token.
    pub fn forward(&self, ids: &[Vec<u32>], req: TextRequest) -> Result<(Tensor, Option<Tensor>)> {
        self.forward_with(ids, &[], req)
    }

    /// [`Self::forward`] with input vectors put in place of token embeddings: each fix
    /// `(row, position, vectors [n, hidden])` (textual-inversion embeddings).
    pub fn forward_with(&self, ids: &[Vec<u32>], fixes: &[(usize, usize, Tensor)], req: TextRequest) -> Result<(Tensor, Option<Tensor>)> {
        let device = self.token_embedding.device().clone();
        let b = ids.len();
        let t = ids.first().map_or(0, Vec::len);
        if t > self.config.max_positions || ids.iter().any(|r| r.len() != t) {
            return Err(EngineError::InvalidRequest(format!(
                "token rows must all have at most {} tokens",
                self.config.max_positions
            )));
        }
        if let Some(bad) = ids.iter().flatten().find(|&&i| i as usize >= self.config.vocab) {
            return Err(EngineError::InvalidRequest(format!(
                "token id {bad} is outside this text encoder's vocabulary of {} (a test model with a reduced vocabulary?)",
                self.config.vocab
            )));
        }
        let flat: Vec<u32> = ids.iter().flatten().copied().collect();
        let ids_t = Tensor::from_vec(flat, (b * t,), &device)?;
        let mut x = self.token_embedding.index_select(&ids_t, 0)?.reshape((b, t, self.config.hidden))?;
        if !fixes.is_empty() {
            let mut rows = Vec::with_capacity(b);
            for r in 0..b {
                let mut row = x.get(r)?;
                for (_, pos, v) in fixes.iter().filter(|f| f.0 == r) {
                    if *pos >= t || v.dim(1)? != self.config.hidden {
                        return Err(EngineError::InvalidRequest(format!(
                            "an embedding of width {} at position {pos} does not fit this encoder (width {}, {t} positions)",
                            v.dim(1)?,
                            self.config.hidden
                        )));
                    }
                    let n = v.dim(0)?.min(t - pos);
                    let v = v.narrow(0, 0, n)?.to_dtype(row.dtype())?.to_device(row.device())?;
                    let mut parts = vec![];
                    if *pos > 0 {
                        parts.push(row.narrow(0, 0, *pos)?);
                    }
                    parts.push(v);
                    if pos + n < t {
                        parts.push(row.narrow(0, pos + n, t - pos - n)?);
                    }
                    row = Tensor::cat(&parts, 0)?;
                }
                rows.push(row);
            }
            x = Tensor::stack(&rows, 0)?;
        }
        let mut x = x.broadcast_add(&self.position_embedding.i(0..t)?)?;
        let total = self.layers.len();
        let keep = total + 1 - req.layer_from_end.clamp(1, total + 1);
        let run = if req.pooled { total } else { keep };
        let mut kept = if keep == 0 { Some(x.clone()) } else { None };
        for (i, l) in self.layers.iter().take(run).enumerate() {
            let h = l.ln1.forward(&x)?;
            let (q, k, v) = (l.q.forward(&h)?, l.k.forward(&h)?, l.v.forward(&h)?);
            let a = attention(&q, &k, &v, self.config.heads, true)?;
            x = (x + l.out.forward(&a)?)?;
            let h = l.fc1.forward(&l.ln2.forward(&x)?)?;
            let h = match self.config.activation {
                Activation::QuickGelu => quick_gelu(&h)?,
                Activation::Gelu => h.gelu_erf()?,
            };
            x = (x + l.fc2.forward(&h)?)?;
            if i + 1 == keep {
                kept = Some(x.clone());
            }
        }
        let hidden = kept.ok_or_else(|| EngineError::Other("text encoder produced no hidden state".into()))?;
        let hidden = if req.final_norm { self.final_ln.forward(&hidden)? } else { hidden };
        let pooled = if req.pooled {
            let last = self.final_ln.forward(&x)?;
            let eos = self.config.vocab as u32 - 1;
            let mut rows = vec![];
            for (r, row) in ids.iter().enumerate() {
                // The end token has the largest id; transformers takes the first occurrence.
                let pos = row
                    .iter()
                    .position(|&i| i == eos)
                    .unwrap_or_else(|| row.iter().enumerate().max_by_key(|(_, v)| **v).map_or(0, |(p, _)| p));
                rows.push(last.i((r, pos))?);
            }
            let pooled = Tensor::stack(&rows, 0)?;
            Some(match &self.projection {
                Some(p) => p.forward(&pooled)?,
                None => pooled,
            })
        } else {
            None
        };
        Ok((hidden, pooled))
    }

    /// The dtype the encoder computes in.
    pub fn dtype(&self) -> DType {
        self.token_embedding.dtype()
    }
}

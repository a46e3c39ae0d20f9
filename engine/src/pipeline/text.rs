//! Prompt text -> the UNet's conditioning: CLIP windows of 77 tokens per encoder, A1111's
//! clip skip, SDXL's two encoders and pooled output, diffusers' zeros for SDXL's empty
//! negative prompt.

use candle_core::{DType as CDType, Tensor};

use super::Pipeline;
use crate::error::Result;
use crate::nets::clip::TextRequest;
use crate::nets::config::Family;
use crate::tokenizer::ClipTokenizer;

/// Text conditioning for a batch of (uncond, cond) or (cond).
pub(super) struct Conditioning {
    pub(super) context: Tensor,
    pub(super) pooled: Option<Tensor>,
}

impl Pipeline {
    /// Text conditioning as the UNet receives it: `[uncond, cond]` contexts `[2, 77k, width]`
    /// (or `[cond]` alone without guidance) and, for SDXL, the pooled embeddings.
    pub fn encode_prompt(&self, prompt: &str, negative: &str, clip_skip: u32, with_uncond: bool) -> Result<(Tensor, Option<Tensor>)> {
        let c = self.encode(prompt, negative, clip_skip, with_uncond)?;
        Ok((c.context, c.pooled))
    }

    pub(super) fn encode(&self, prompt: &str, negative: &str, clip_skip: u32, with_uncond: bool) -> Result<Conditioning> {
        let tok = ClipTokenizer::shared()?;
        // `<lora:name:w>` tags are resolved by the engine before a job runs; never encode them.
        let (prompt, _) = crate::lora::extract_prompt_tags(prompt);
        let (negative, _) = crate::lora::extract_prompt_tags(negative);
        let (prompt, negative) = (prompt.as_str(), negative.as_str());
        let sdxl = self.config.family == Family::Sdxl;
        let mut contexts = vec![];
        let mut pooled = None;
        for (i, enc) in self.text.iter().enumerate() {
            let pad = enc.config.pad_token;
            let mut cond = tok.windows(prompt, pad);
            let mut uncond = tok.windows(negative, pad);
            let k = cond.len().max(uncond.len());
            let empty = tok.windows("", pad);
            cond.resize(k, empty[0].clone());
            uncond.resize(k, empty[0].clone());
            let rows: Vec<Vec<u32>> = if with_uncond {
                uncond.iter().chain(cond.iter()).cloned().collect()
            } else {
                cond.clone()
            };
            let req = if sdxl {
                TextRequest {
                    layer_from_end: 1 + clip_skip as usize,
                    final_norm: false,
                    pooled: i == 1,
                }
            } else {
                TextRequest {
                    layer_from_end: self.config.text_layer_base + clip_skip as usize - 1,
                    final_norm: true,
                    // An SD 1.x-family UNet with `add_embedding` (the embedded model trained
                    // with `--pooled-text`) takes the last encoder's pooled output, as SDXL.
                    pooled: self.config.unet.addition.is_some() && i + 1 == self.text.len(),
                }
            };
            let (hidden, pool) = enc.forward(&rows, req)?;
            let b = if with_uncond { 2 } else { 1 };
            let d = hidden.dim(2)?;
            // rows are [prompt0 windows..., prompt1 windows...]: join each prompt's windows.
            let hidden = hidden.reshape((b, k * hidden.dim(1)?, d))?;
            contexts.push(hidden.to_dtype(CDType::F32)?);
            if let Some(p) = pool {
                // Pooled embedding of each prompt's first window.
                let idx: Vec<u32> = (0..b as u32).map(|j| j * k as u32).collect();
                let idx = Tensor::from_vec(idx, (b,), p.device())?;
                pooled = Some(p.index_select(&idx, 0)?.to_dtype(CDType::F32)?);
            }
        }
        let mut context = if contexts.len() == 1 {
            contexts.remove(0)
        } else {
            Tensor::cat(&contexts, 2)?
        };
        // diffusers' SDXL pipelines use zeros, not the encoded empty string, for an empty
        // negative prompt (`force_zeros_for_empty_prompt`).
        if sdxl && with_uncond && negative.trim().is_empty() {
            let cond_ctx = context.narrow(0, 1, 1)?;
            context = Tensor::cat(&[&cond_ctx.zeros_like()?, &cond_ctx], 0)?;
            if let Some(p) = pooled.take() {
                let c = p.narrow(0, 1, 1)?;
                pooled = Some(Tensor::cat(&[&c.zeros_like()?, &c], 0)?);
            }
        }
        Ok(Conditioning { context, pooled })
    }
}

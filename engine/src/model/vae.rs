//! The KL autoencoder's decoder (latents -> pixels).

use candle_core::{DType, Module, Tensor};
use candle_nn::{Conv2d, GroupNorm, Linear};

use super::checkpoint::Weights;
use super::config::VaeConfig;
use super::layers::{attention, conv2d, group_norm, linear};
use super::unet::PublicResnet;
use crate::error::Result;

struct MidAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl MidAttention {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let y = self.norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (q, k, v) = (self.q.forward(&y)?, self.k.forward(&y)?, self.v.forward(&y)?);
        let a = self.out.forward(&attention(&q, &k, &v, 1, false)?)?;
        let a = a.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((a + x)?)
    }
}

/// The decoder half of the autoencoder.
pub struct VaeDecoder {
    pub config: VaeConfig,
    post_quant: Option<Conv2d>,
    conv_in: Conv2d,
    mid: (PublicResnet, Option<MidAttention>, PublicResnet),
    up: Vec<(Vec<PublicResnet>, Option<Conv2d>)>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    dtype: DType,
}

impl VaeDecoder {
    /// Builds the decoder from `vae.*` weights.
    pub fn new(w: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let g = cfg.groups;
        let eps = 1e-6;
        let p = "vae.decoder";
        let mid_attn = if cfg.mid_attention {
            let a = format!("{p}.mid_block.attentions.0");
            Some(MidAttention {
                norm: group_norm(w, &format!("{a}.group_norm"), g, eps)?,
                q: linear(w, &format!("{a}.to_q"))?,
                k: linear(w, &format!("{a}.to_k"))?,
                v: linear(w, &format!("{a}.to_v"))?,
                out: linear(w, &format!("{a}.to_out.0"))?,
            })
        } else {
            None
        };
        let n = cfg.block_out_channels.len();
        let mut up = vec![];
        for i in 0..n {
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| PublicResnet::new(w, &format!("{p}.up_blocks.{i}.resnets.{j}"), g, eps))
                .collect::<Result<_>>()?;
            let sampler = if i + 1 < n {
                Some(conv2d(w, &format!("{p}.up_blocks.{i}.upsamplers.0.conv"), 1)?)
            } else {
                None
            };
            up.push((resnets, sampler));
        }
        let conv_in = conv2d(w, &format!("{p}.conv_in"), 1)?;
        let dtype = conv_in.weight().dtype();
        Ok(Self {
            config: cfg.clone(),
            post_quant: if w.has("vae.post_quant_conv.weight") {
                Some(conv2d(w, "vae.post_quant_conv", 1)?)
            } else {
                None
            },
            conv_in,
            mid: (
                PublicResnet::new(w, &format!("{p}.mid_block.resnets.0"), g, eps)?,
                mid_attn,
                PublicResnet::new(w, &format!("{p}.mid_block.resnets.1"), g, eps)?,
            ),
            up,
            norm_out: group_norm(w, &format!("{p}.conv_norm_out"), g, eps)?,
            conv_out: conv2d(w, &format!("{p}.conv_out"), 1)?,
            dtype,
        })
    }

    /// Decodes latents (already divided by the scaling factor) to images in [-1, 1] (f32).
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        let mut h = z.to_dtype(self.dtype)?;
        if let Some(pq) = &self.post_quant {
            h = pq.forward(&h)?;
        }
        h = self.conv_in.forward(&h)?;
        h = self.mid.0.forward(&h)?;
        if let Some(a) = &self.mid.1 {
            h = a.forward(&h)?;
        }
        h = self.mid.2.forward(&h)?;
        for (resnets, sampler) in &self.up {
            for r in resnets {
                h = r.forward(&h)?;
            }
            if let Some(s) = sampler {
                let (hh, ww) = (h.dim(2)?, h.dim(3)?);
                h = s.forward(&h.upsample_nearest2d(hh * 2, ww * 2)?)?;
            }
        }
        let h = self.conv_out.forward(&self.norm_out.forward(&h)?.silu()?)?;
        Ok(h.to_dtype(DType::F32)?)
    }
}

//! The KL autoencoder's decoder (latents -> pixels).

use candle_core::{DType, Module, Tensor};

use super::config::VaeConfig;
use super::layers::{CONV_UNFOLD_BUDGET, Conv2d, GroupNorm, Linear, attention, attention_bf16, conv2d, conv2d_with, group_norm, linear};
use super::unet::PublicResnet;
use super::weights::Weights;
use crate::error::Result;

struct MidAttention {
    norm: GroupNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
}

impl MidAttention {
    fn new(w: &Weights, a: &str, groups: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            norm: group_norm(w, &format!("{a}.group_norm"), groups, eps)?,
            q: linear(w, &format!("{a}.to_q"))?,
            k: linear(w, &format!("{a}.to_k"))?,
            v: linear(w, &format!("{a}.to_v"))?,
            out: linear(w, &format!("{a}.to_out.0"))?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = x.dims4()?;
        let y = self.norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (q, k, v) = (self.q.forward(&y)?, self.k.forward(&y)?, self.v.forward(&y)?);
        let a = if self.q.dtype() == DType::BF16 {
            attention_bf16(&q, &k, &v, 1, false)?
        } else {
            attention(&q, &k, &v, 1, false)?
        };
        let a = self.out.forward(&a)?;
        let a = a.transpose(1, 2)?.reshape((b, c, h, w))?;
        Ok((a + x)?)
    }
}

pub use crate::protocol::VaeTiling;

/// Latent pixels shared by neighbouring tiles; blended with linear ramps.
pub const TILE_OVERLAP: usize = 8;
/// The smallest tile worth decoding (smaller tiles see too little context).
pub const MIN_TILE: usize = 24;

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
            Some(MidAttention::new(w, &format!("{p}.mid_block.attentions.0"), g, eps)?)
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
        let dtype = conv_in.dtype();
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

    /// Bytes one untiled decode of `batch` latents of `h` x `w` needs beyond the weights
    /// (f32 compute): about six activations at the largest level (a resnet's input, its
    /// normalised and convolved copies, the upsampled tensor) plus one convolution's
    /// bounded unfold buffer ([`CONV_UNFOLD_BUDGET`]).
    pub fn decode_bytes(&self, batch: usize, h: usize, w: usize) -> u64 {
        let chans: Vec<usize> = self.config.block_out_channels.iter().rev().copied().collect();
        let mut worst = 0u64;
        let mut pixels = (h * w) as u64;
        let mut c_in = chans.first().copied().unwrap_or(0) as u64;
        for (i, &c) in chans.iter().enumerate() {
            let c = c as u64;
            worst = worst.max(6 * pixels * c_in.max(c) * 4);
            if i + 1 < chans.len() {
                pixels *= 4;
                // The upsampled tensor and the upsampler's convolution on c channels.
                worst = worst.max(6 * pixels * c * 4);
            }
            c_in = c;
        }
        worst * batch as u64 + CONV_UNFOLD_BUDGET as u64
    }

    /// The tile size (latent pixels) `tiling` asks for with this memory budget, or `None` to
    /// decode the image whole.
    pub fn tile_for(&self, tiling: VaeTiling, batch: usize, h: usize, w: usize, budget: u64) -> Option<usize> {
        let tile = match tiling {
            VaeTiling::Off => return None,
            VaeTiling::Tile(t) => t.max(MIN_TILE),
            VaeTiling::Auto => {
                if self.decode_bytes(batch, h, w) <= budget {
                    return None;
                }
                let mut t = h.max(w);
                while t > MIN_TILE && self.decode_bytes(batch, t, t) > budget {
                    t = (t * 3 / 4).max(MIN_TILE);
                }
                t
            }
        };
        (tile < h || tile < w).then_some(tile)
    }

    /// Decodes with [`VaeTiling`] under a memory budget in bytes.
    pub fn decode_with(&self, z: &Tensor, tiling: VaeTiling, budget: u64) -> Result<Tensor> {
        let (b, _, h, w) = z.dims4()?;
        match self.tile_for(tiling, b, h, w, budget) {
            Some(tile) => self.decode_tiled(z, tile, TILE_OVERLAP),
            None => self.decode(z),
        }
    }

    /// Decodes overlapping square tiles of `tile` latent pixels (`overlap` shared with each
    /// neighbour) and blends them with weights that ramp linearly across the shared band, so
    /// no seam shows; memory is that of one tile. Each tile normalises over its own pixels,
    /// so the result differs slightly from a whole decode (measured in the tests).
    pub fn decode_tiled(&self, z: &Tensor, tile: usize, overlap: usize) -> Result<Tensor> {
        let (b, _, h, w) = z.dims4()?;
        let tile = tile.max(overlap + 1);
        if tile >= h && tile >= w {
            return self.decode(z);
        }
        let s = self.config.scale();
        let acc = blend_tiles(h, w, tile, overlap, s, b * 3, |y0, x0, th, tw| {
            let zt = z.narrow(2, y0, th)?.narrow(3, x0, tw)?.contiguous()?;
            Ok(self.decode(&zt)?.flatten_all()?.to_vec1::<f32>()?)
        })?;
        Ok(Tensor::from_vec(acc, (b, 3, h * s, w * s), z.device())?)
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
        let h = self.conv_out.forward(&self.norm_out.forward_silu(&h)?)?;
        Ok(h.to_dtype(DType::F32)?)
    }
}

/// The encoder half (pixels -> latent distribution), as diffusers' `AutoencoderKL.encoder`
/// plus `quant_conv`: used to train the autoencoder and to encode training images.
pub struct VaeEncoder {
    conv_in: Conv2d,
    down: Vec<(Vec<PublicResnet>, Option<Conv2d>)>,
    mid: (PublicResnet, Option<MidAttention>, PublicResnet),
    norm_out: GroupNorm,
    conv_out: Conv2d,
    quant: Option<Conv2d>,
    block_out: Vec<usize>,
    latent: usize,
}

impl VaeEncoder {
    /// Builds the encoder from `vae.encoder.*` (and `vae.quant_conv`) weights.
    pub fn new(w: &Weights, cfg: &VaeConfig) -> Result<Self> {
        let (g, eps, p) = (cfg.groups, 1e-6, "vae.encoder");
        let n = cfg.block_out_channels.len();
        let mut down = vec![];
        for i in 0..n {
            let resnets = (0..cfg.layers_per_block)
                .map(|j| PublicResnet::new(w, &format!("{p}.down_blocks.{i}.resnets.{j}"), g, eps))
                .collect::<Result<_>>()?;
            let sampler = if i + 1 < n {
                // Stride 2 after padding one row/column at the bottom/right only.
                Some(conv2d_with(w, &format!("{p}.down_blocks.{i}.downsamplers.0.conv"), 0, 2)?)
            } else {
                None
            };
            down.push((resnets, sampler));
        }
        Ok(Self {
            conv_in: conv2d(w, &format!("{p}.conv_in"), 1)?,
            down,
            mid: (
                PublicResnet::new(w, &format!("{p}.mid_block.resnets.0"), g, eps)?,
                if cfg.mid_attention {
                    Some(MidAttention::new(w, &format!("{p}.mid_block.attentions.0"), g, eps)?)
                } else {
                    None
                },
                PublicResnet::new(w, &format!("{p}.mid_block.resnets.1"), g, eps)?,
            ),
            norm_out: group_norm(w, &format!("{p}.conv_norm_out"), g, eps)?,
            conv_out: conv2d(w, &format!("{p}.conv_out"), 1)?,
            quant: if w.has("vae.quant_conv.weight") {
                Some(conv2d(w, "vae.quant_conv", 1)?)
            } else {
                None
            },
            block_out: cfg.block_out_channels.clone(),
            latent: cfg.latent_channels,
        })
    }

    /// Images in [-1, 1] `[b, 3, H, W]` -> (mean, log-variance), each `[b, latent, H/s, W/s]`
    /// (before the scaling factor).
    pub fn encode(&self, x: &Tensor) -> Result<(Tensor, Tensor)> {
        let mut h = self.conv_in.forward(x)?;
        for (resnets, sampler) in &self.down {
            for r in resnets {
                h = r.forward(&h)?;
            }
            if let Some(s) = sampler {
                h = s.forward(&h.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
            }
        }
        h = self.mid.0.forward(&h)?;
        if let Some(a) = &self.mid.1 {
            h = a.forward(&h)?;
        }
        h = self.mid.2.forward(&h)?;
        let mut h = self.conv_out.forward(&self.norm_out.forward_silu(&h)?)?;
        if let Some(q) = &self.quant {
            h = q.forward(&h)?;
        }
        let c = h.dim(1)? / 2;
        Ok((h.narrow(1, 0, c)?, h.narrow(1, c, c)?.clamp(-30f32, 20f32)?))
    }

    /// Bytes one untiled encode of `[batch, 3, h, w]` pixels needs (f32): about six
    /// activations at the largest level of each resolution, as [`VaeDecoder::decode_bytes`].
    pub fn encode_bytes(&self, batch: usize, h: usize, w: usize) -> u64 {
        let mut worst = 0u64;
        let mut pixels = (h * w) as u64;
        let mut c_in = self.block_out.first().copied().unwrap_or(0) as u64;
        for (i, &c) in self.block_out.iter().enumerate() {
            let c = c as u64;
            worst = worst.max(6 * pixels * c_in.max(c) * 4);
            if i + 1 < self.block_out.len() {
                pixels /= 4;
            }
            c_in = c;
        }
        worst * batch as u64 + CONV_UNFOLD_BUDGET as u64
    }

    /// Encodes with [`VaeTiling`] under a memory budget in bytes: big pictures in
    /// overlapping tiles whose latent moments are blended as the decoder's tiles are (each
    /// tile normalises over its own pixels, so it differs slightly from a whole encode).
    /// `scale` is the VAE's pixels per latent.
    pub fn encode_with(&self, x: &Tensor, scale: usize, tiling: VaeTiling, budget: u64) -> Result<(Tensor, Tensor)> {
        let (b, _, ph, pw) = x.dims4()?;
        let (h, w) = (ph / scale, pw / scale);
        let tile = match tiling {
            VaeTiling::Off => None,
            VaeTiling::Tile(t) => Some(t.max(MIN_TILE)),
            VaeTiling::Auto if self.encode_bytes(b, ph, pw) <= budget => None,
            VaeTiling::Auto => {
                let mut t = h.max(w);
                while t > MIN_TILE && self.encode_bytes(b, t * scale, t * scale) > budget {
                    t = (t * 3 / 4).max(MIN_TILE);
                }
                Some(t)
            }
        };
        let tile = match tile {
            Some(t) if (t < h || t < w) && ph % scale == 0 && pw % scale == 0 => t.max(TILE_OVERLAP + 1),
            _ => return self.encode(x),
        };
        let c = self.latent;
        let moments = blend_tiles(h, w, tile, TILE_OVERLAP, 1, b * 2 * c, |y0, x0, th, tw| {
            let xt = x
                .narrow(2, y0 * scale, th * scale)?
                .narrow(3, x0 * scale, tw * scale)?
                .contiguous()?;
            let (m, l) = self.encode(&xt)?;
            Ok(Tensor::cat(&[&m, &l], 1)?
                .to_dtype(candle_core::DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?)
        })?;
        let all = Tensor::from_vec(moments, (b, 2 * c, h, w), x.device())?;
        Ok((all.narrow(1, 0, c)?, all.narrow(1, c, c)?))
    }
}

/// Runs `tile_fn` on overlapping square tiles of `tile` grid cells (`overlap` shared with each
/// neighbour) of an `h` x `w` grid and blends what it returns (`chans` planes of `scale`
/// output pixels per cell, `[chans, th * scale, tw * scale]`) with weights that ramp linearly
/// across the shared band, so no seam shows; memory is that of one tile.
fn blend_tiles(
    h: usize,
    w: usize,
    tile: usize,
    overlap: usize,
    scale: usize,
    chans: usize,
    mut tile_fn: impl FnMut(usize, usize, usize, usize) -> Result<Vec<f32>>,
) -> Result<Vec<f32>> {
    let s = scale;
    let (ph, pw) = (h * s, w * s);
    let starts = |n: usize| -> Vec<usize> {
        if n <= tile {
            return vec![0];
        }
        let step = tile - overlap;
        let mut v: Vec<usize> = (0..).map(|i| i * step).take_while(|&p| p + tile < n).collect();
        v.push(n - tile);
        v.dedup();
        v
    };
    let mut acc = vec![0f32; chans * ph * pw];
    let mut wsum = vec![0f32; ph * pw];
    // Weight of pixel p (of len) in a tile: ramps up over the overlap on sides that have a
    // neighbour, 1 elsewhere; never 0, so every pixel is covered.
    let ramp = |p: usize, len: usize, lead: bool, trail: bool| -> f32 {
        let band = (overlap * s) as f32;
        let mut v = 1f32;
        if lead {
            v = v.min((p as f32 + 0.5) / band);
        }
        if trail {
            v = v.min(((len - p) as f32 - 0.5) / band);
        }
        v.max(1e-3)
    };
    for &y0 in &starts(h) {
        for &x0 in &starts(w) {
            let (th, tw) = (tile.min(h), tile.min(w));
            let img = tile_fn(y0, x0, th, tw)?;
            let (tph, tpw) = (th * s, tw * s);
            let (lead_y, trail_y) = (y0 > 0, y0 + th < h);
            let (lead_x, trail_x) = (x0 > 0, x0 + tw < w);
            let wy: Vec<f32> = (0..tph).map(|p| ramp(p, tph, lead_y, trail_y)).collect();
            let wx: Vec<f32> = (0..tpw).map(|p| ramp(p, tpw, lead_x, trail_x)).collect();
            for py in 0..tph {
                let oy = y0 * s + py;
                for px in 0..tpw {
                    let ox = x0 * s + px;
                    let wt = wy[py] * wx[px];
                    wsum[oy * pw + ox] += wt;
                    for bc in 0..chans {
                        acc[(bc * ph + oy) * pw + ox] += wt * img[(bc * tph + py) * tpw + px];
                    }
                }
            }
        }
    }
    for bc in 0..chans {
        for (a, ws) in acc[bc * ph * pw..(bc + 1) * ph * pw].iter_mut().zip(&wsum) {
            *a /= ws;
        }
    }
    Ok(acc)
}

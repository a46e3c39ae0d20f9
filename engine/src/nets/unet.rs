//! The conditional UNet of Stable Diffusion 1.x, 2.x and SDXL (diffusers layout).
//!
//! Written here rather than taken from candle-transformers: its SDXL UNet lacks the size/crop
//! conditioning (`add_embedding`), its sliced attention is broken, and later work (feature
//! caching, token merging, LoRA) needs hooks inside the blocks.

use candle_core::{DType, Module, Tensor};

use super::config::UnetConfig;
use super::layers::{Conv2d, GroupNorm, LayerNorm, Linear, attention, attention_bf16, conv2d, geglu, group_norm, layer_norm, linear};
use super::weights::Weights;
use crate::error::{EngineError, Result};

/// Sinusoidal embedding of `t` (diffusers `Timesteps` with `flip_sin_to_cos`, shift 0).
pub fn timestep_embedding(t: &[f64], dim: usize, device: &candle_core::Device) -> Result<Tensor> {
    let half = dim / 2;
    let mut data = Vec::with_capacity(t.len() * dim);
    for &tv in t {
        let freqs: Vec<f32> = (0..half)
            .map(|i| {
                let exponent = -(10000f32.ln()) * i as f32 / half as f32;
                exponent.exp() * tv as f32
            })
            .collect();
        data.extend(freqs.iter().map(|f| f.cos()));
        data.extend(freqs.iter().map(|f| f.sin()));
    }
    Ok(Tensor::from_vec(data, (t.len(), dim), device)?)
}

struct ResnetBlock {
    norm1: GroupNorm,
    conv1: Conv2d,
    time: Option<Linear>,
    norm2: GroupNorm,
    conv2: Conv2d,
    shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    fn new(w: &Weights, p: &str, groups: usize, eps: f64) -> Result<Self> {
        let has = |n: &str| w.has(&format!("{p}.{n}.weight"));
        Ok(Self {
            norm1: group_norm(w, &format!("{p}.norm1"), groups, eps)?,
            conv1: conv2d(w, &format!("{p}.conv1"), 1)?,
            time: if has("time_emb_proj") {
                Some(linear(w, &format!("{p}.time_emb_proj"))?)
            } else {
                None
            },
            norm2: group_norm(w, &format!("{p}.norm2"), groups, eps)?,
            conv2: conv2d(w, &format!("{p}.conv2"), 1)?,
            shortcut: if has("conv_shortcut") {
                Some(conv2d(w, &format!("{p}.conv_shortcut"), 1)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor, emb: Option<&Tensor>) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let h = match (&self.time, emb) {
            (Some(t), Some(e)) => add_time(&h, &t.forward(&e.silu()?)?)?,
            _ => h,
        };
        let h = self.conv2.forward(&self.norm2.forward_silu(&h)?)?;
        let skip = match &self.shortcut {
            Some(s) => s.forward(x)?,
            None => x.clone(),
        };
        Ok((skip + h)?)
    }
}

/// Re-exported for the VAE, which uses the same residual block without a time embedding.
pub(crate) struct PublicResnet(ResnetBlock);

impl PublicResnet {
    pub(crate) fn new(w: &Weights, p: &str, groups: usize, eps: f64) -> Result<Self> {
        Ok(Self(ResnetBlock::new(w, p, groups, eps)?))
    }
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.0.forward(x, None)
    }
}

struct CrossAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl CrossAttention {
    fn new(w: &Weights, p: &str, heads: usize) -> Result<Self> {
        Ok(Self {
            q: linear(w, &format!("{p}.to_q"))?,
            k: linear(w, &format!("{p}.to_k"))?,
            v: linear(w, &format!("{p}.to_v"))?,
            out: linear(w, &format!("{p}.to_out.0"))?,
            heads,
        })
    }
    fn forward(&self, x: &Tensor, context: &Tensor) -> Result<Tensor> {
        let q = self.q.forward(x)?;
        let k = self.k.forward(context)?;
        let v = self.v.forward(context)?;
        let a = if self.q.dtype() == DType::BF16 {
            attention_bf16(&q, &k, &v, self.heads, false)?
        } else {
            attention(&q, &k, &v, self.heads, false)?
        };
        Ok(self.out.forward(&a)?)
    }
}

struct TransformerBlock {
    norm1: LayerNorm,
    attn1: CrossAttention,
    norm2: LayerNorm,
    attn2: CrossAttention,
    norm3: LayerNorm,
    ff_in: Linear,
    ff_out: Linear,
}

impl TransformerBlock {
    fn new(w: &Weights, p: &str, heads: usize) -> Result<Self> {
        Ok(Self {
            norm1: layer_norm(w, &format!("{p}.norm1"), 1e-5)?,
            attn1: CrossAttention::new(w, &format!("{p}.attn1"), heads)?,
            norm2: layer_norm(w, &format!("{p}.norm2"), 1e-5)?,
            attn2: CrossAttention::new(w, &format!("{p}.attn2"), heads)?,
            norm3: layer_norm(w, &format!("{p}.norm3"), 1e-5)?,
            ff_in: linear(w, &format!("{p}.ff.net.0.proj"))?,
            ff_out: linear(w, &format!("{p}.ff.net.2"))?,
        })
    }
    /// `merge`: token merging for the self-attention (ratio, token grid height and width).
    fn forward(&self, x: &Tensor, context: &Tensor, merge: Option<(f64, usize, usize)>) -> Result<Tensor> {
        let h = self.norm1.forward(x)?;
        let plan = match merge {
            Some((ratio, gh, gw)) => super::tome::Merge::plan(x, gh, gw, ratio)?,
            None => None,
        };
        let a = match plan {
            Some(m) => {
                let hm = m.merge(&h)?;
                m.unmerge(&self.attn1.forward(&hm, &hm)?)?
            }
            None => self.attn1.forward(&h, &h)?,
        };
        let x = (x + a)?;
        let x = (&x + self.attn2.forward(&self.norm2.forward(&x)?, context)?)?;
        let h = self.ff_in.forward(&self.norm3.forward(&x)?)?;
        let h = geglu(&h)?;
        Ok((x + self.ff_out.forward(&h)?)?)
    }
}

struct SpatialTransformer {
    norm: GroupNorm,
    proj_in: Projection,
    blocks: Vec<TransformerBlock>,
    proj_out: Projection,
}

/// `proj_in`/`proj_out` are 1x1 convolutions in SD 1.x and linear layers in SD 2.x/SDXL.
enum Projection {
    Conv(Conv2d),
    Linear(Linear),
}

impl Projection {
    fn new(w: &Weights, p: &str, linear_layer: bool) -> Result<Self> {
        Ok(if linear_layer {
            Projection::Linear(linear(w, p)?)
        } else {
            Projection::Conv(conv2d(w, p, 1)?)
        })
    }
}

impl SpatialTransformer {
    fn new(w: &Weights, p: &str, depth: usize, heads: usize, cfg: &UnetConfig) -> Result<Self> {
        Ok(Self {
            norm: group_norm(w, &format!("{p}.norm"), cfg.groups, 1e-6)?,
            proj_in: Projection::new(w, &format!("{p}.proj_in"), cfg.linear_projection)?,
            blocks: (0..depth)
                .map(|i| TransformerBlock::new(w, &format!("{p}.transformer_blocks.{i}"), heads))
                .collect::<Result<_>>()?,
            proj_out: Projection::new(w, &format!("{p}.proj_out"), cfg.linear_projection)?,
        })
    }
    /// `merge`: the token merging ratio for the self-attention of every block (0: none).
    fn forward(&self, x: &Tensor, context: &Tensor, merge: f64) -> Result<Tensor> {
        let (b, c, h, wd) = x.dims4()?;
        let y = self.norm.forward(x)?;
        let to_tokens = |t: Tensor| -> Result<Tensor> {
            let ch = t.dim(1)?;
            Ok(t.permute((0, 2, 3, 1))?.reshape((b, h * wd, ch))?)
        };
        let mut y = match &self.proj_in {
            Projection::Conv(conv) => to_tokens(conv.forward(&y)?)?,
            Projection::Linear(l) => l.forward(&to_tokens(y)?)?,
        };
        let merge = (merge > 0.0).then_some((merge, h, wd));
        for blk in &self.blocks {
            y = blk.forward(&y, context, merge)?;
        }
        let to_map = |t: Tensor| -> Result<Tensor> {
            let ch = t.dim(2)?;
            Ok(t.reshape((b, h, wd, ch))?.permute((0, 3, 1, 2))?.contiguous()?)
        };
        let y = match &self.proj_out {
            Projection::Conv(conv) => conv.forward(&to_map(y)?)?,
            Projection::Linear(l) => to_map(l.forward(&y)?)?,
        };
        debug_assert_eq!(y.dim(1).ok(), Some(c));
        Ok((y + x)?)
    }
}

struct Block {
    resnets: Vec<ResnetBlock>,
    attentions: Vec<SpatialTransformer>,
    sampler: Option<Conv2d>,
}

/// The UNet.
pub struct Unet {
    pub config: UnetConfig,
    conv_in: Conv2d,
    time_1: Linear,
    time_2: Linear,
    add: Option<(Linear, Linear)>,
    down: Vec<Block>,
    mid: (ResnetBlock, Option<SpatialTransformer>, ResnetBlock),
    up: Vec<Block>,
    norm_out: GroupNorm,
    conv_out: Conv2d,
    dtype: DType,
}

/// Conditioning for one UNet call.
pub struct UnetInput<'a> {
    /// `[b, c, h, w]` latents, already scaled for the network's input.
    pub sample: &'a Tensor,
    /// One timestep per batch row.
    pub timesteps: &'a [f64],
    /// `[b, tokens, context]` text embeddings.
    pub context: &'a Tensor,
    /// SDXL: `[b, pooled]` pooled text embedding and `[b, 6]` size/crop values.
    pub added: Option<(&'a Tensor, &'a Tensor)>,
    /// Token merging ratio for the top level's self-attention ([`super::tome`]; 0 = off).
    pub token_merge: f64,
}

/// How one UNet call uses the feature cache (DeepCache, Ma et al. 2023). The features that
/// enter the last up block's layer fed by the first down block's first layer carry everything
/// deeper, and change slowly from one solver step to the next; a shallow call reuses them and
/// runs only the skip branch around them: `conv_in`, the first layer of the first down block,
/// the last up block's last two layers and `conv_out` (DeepCache's default branch for SD; on
/// a UNet with one layer per block, the whole top level).
pub enum DeepCache<'a> {
    /// The whole network; nothing kept.
    Off,
    /// The whole network, keeping the deep features in the slot.
    Refresh(&'a mut Option<Tensor>),
    /// Only the top level, with the deep features of the last refresh.
    Reuse(&'a Tensor),
}

impl Unet {
    /// Builds the UNet from `unet.*` weights.
    pub fn new(w: &Weights, cfg: &UnetConfig) -> Result<Self> {
        let g = cfg.groups;
        let n = cfg.block_out_channels.len();
        let mut down = vec![];
        for i in 0..n {
            let p = format!("unet.down_blocks.{i}");
            let resnets = (0..cfg.layers_per_block)
                .map(|j| ResnetBlock::new(w, &format!("{p}.resnets.{j}"), g, 1e-5))
                .collect::<Result<_>>()?;
            let attentions = match cfg.down_attention[i] {
                Some(depth) => (0..cfg.layers_per_block)
                    .map(|j| SpatialTransformer::new(w, &format!("{p}.attentions.{j}"), depth, cfg.heads[i], cfg))
                    .collect::<Result<_>>()?,
                None => vec![],
            };
            let sampler = if i + 1 < n {
                Some(conv2d(w, &format!("{p}.downsamplers.0.conv"), 2)?)
            } else {
                None
            };
            down.push(Block {
                resnets,
                attentions,
                sampler,
            });
        }
        let mid = (
            ResnetBlock::new(w, "unet.mid_block.resnets.0", g, 1e-5)?,
            match cfg.mid_attention {
                Some(depth) => Some(SpatialTransformer::new(
                    w,
                    "unet.mid_block.attentions.0",
                    depth,
                    cfg.heads[n - 1],
                    cfg,
                )?),
                None => None,
            },
            ResnetBlock::new(w, "unet.mid_block.resnets.1", g, 1e-5)?,
        );
        let mut up = vec![];
        for i in 0..n {
            let p = format!("unet.up_blocks.{i}");
            let heads = cfg.heads[n - 1 - i];
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| ResnetBlock::new(w, &format!("{p}.resnets.{j}"), g, 1e-5))
                .collect::<Result<_>>()?;
            let attentions = match cfg.up_attention[i] {
                Some(depth) => (0..=cfg.layers_per_block)
                    .map(|j| SpatialTransformer::new(w, &format!("{p}.attentions.{j}"), depth, heads, cfg))
                    .collect::<Result<_>>()?,
                None => vec![],
            };
            let sampler = if i + 1 < n {
                Some(conv2d(w, &format!("{p}.upsamplers.0.conv"), 1)?)
            } else {
                None
            };
            up.push(Block {
                resnets,
                attentions,
                sampler,
            });
        }
        let add = if cfg.addition.is_some() {
            Some((linear(w, "unet.add_embedding.linear_1")?, linear(w, "unet.add_embedding.linear_2")?))
        } else {
            None
        };
        let conv_in = conv2d(w, "unet.conv_in", 1)?;
        let dtype = conv_in.dtype();
        Ok(Self {
            config: cfg.clone(),
            conv_in,
            time_1: linear(w, "unet.time_embedding.linear_1")?,
            time_2: linear(w, "unet.time_embedding.linear_2")?,
            add,
            down,
            mid,
            up,
            norm_out: group_norm(w, "unet.conv_norm_out", g, 1e-5)?,
            conv_out: conv2d(w, "unet.conv_out", 1)?,
            dtype,
        })
    }

    /// One network evaluation.
    pub fn forward(&self, input: &UnetInput) -> Result<Tensor> {
        self.forward_cached(input, DeepCache::Off)
    }

    /// Whether [`DeepCache`] applies: a network with at least two levels.
    pub fn caches_deep_features(&self) -> bool {
        self.down.len() >= 2 && self.down[0].sampler.is_some()
    }

    /// One network evaluation, whole or shallow ([`DeepCache`]). A shallow call with the deep
    /// features of a whole call on the same input returns exactly that call's output.
    pub fn forward_cached(&self, input: &UnetInput, mut cache: DeepCache) -> Result<Tensor> {
        if !matches!(cache, DeepCache::Off) && !self.caches_deep_features() {
            return Err(EngineError::InvalidRequest(
                "the feature cache needs a UNet with at least two levels".into(),
            ));
        }
        let x = input.sample.to_dtype(self.dtype)?;
        let device = x.device().clone();
        let b = x.dim(0)?;
        if input.timesteps.len() != b {
            return Err(EngineError::Other(format!(
                "{} timesteps for a batch of {b}",
                input.timesteps.len()
            )));
        }
        let t_emb = timestep_embedding(input.timesteps, self.config.block_out_channels[0], &device)?.to_dtype(self.dtype)?;
        let mut emb = self.time_2.forward(&self.time_1.forward(&t_emb)?.silu()?)?;
        if let (Some((l1, l2)), Some((dim, _))) = (&self.add, self.config.addition) {
            let (pooled, ids) = input
                .added
                .ok_or_else(|| EngineError::Other("SDXL UNet called without size conditioning".into()))?;
            let ids_v: Vec<f64> = ids.to_dtype(DType::F64)?.flatten_all()?.to_vec1()?;
            let ids_emb = timestep_embedding(&ids_v, dim, &device)?
                .reshape((b, 6 * dim))?
                .to_dtype(self.dtype)?;
            let add_in = Tensor::cat(&[&pooled.to_dtype(self.dtype)?, &ids_emb], 1)?;
            emb = (emb + l2.forward(&l1.forward(&add_in)?.silu()?)?)?;
        }
        let context = input.context.to_dtype(self.dtype)?;
        let cond = LayerCond {
            emb: &emb,
            context: &context,
            token_merge: input.token_merge,
        };
        let mut h = self.conv_in.forward(&x)?;
        let mut skips = vec![h.clone()];
        // The skip branch: this many layers of the first down block, and one more than that
        // at the end of the last up block (the one fed by `conv_in`).
        let branch = self.down[0].resnets.len().min(1);
        let last = self.up.len().saturating_sub(1);
        let cut = self.up[last].resnets.len().saturating_sub(branch + 1);
        let shallow = match &cache {
            DeepCache::Reuse(deep) => Some((*deep).clone()),
            _ => None,
        };
        if let Some(deep) = shallow {
            if deep.dim(0)? != b {
                return Err(EngineError::Other(format!(
                    "cached deep features are for a batch of {}, not {b}",
                    deep.dim(0)?
                )));
            }
            let blk = &self.down[0];
            for (j, r) in blk.resnets.iter().enumerate().take(branch) {
                h = r.forward(&h, Some(&emb))?;
                if let Some(a) = blk.attentions.get(j) {
                    h = a.forward(&h, &context, input.token_merge)?;
                }
                skips.push(h.clone());
            }
            let n = self.up[last].resnets.len();
            h = self.up_layers(last, cut..n, deep, &mut skips, &cond)?;
        } else {
            for (bi, blk) in self.down.iter().enumerate() {
                // Token merging at the top level only (tomesd's `max_downsample` 1).
                let merge = if bi == 0 { input.token_merge } else { 0.0 };
                for (j, r) in blk.resnets.iter().enumerate() {
                    h = r.forward(&h, Some(&emb))?;
                    if let Some(a) = blk.attentions.get(j) {
                        h = a.forward(&h, &context, merge)?;
                    }
                    skips.push(h.clone());
                }
                if let Some(s) = &blk.sampler {
                    h = s.forward(&h)?;
                    skips.push(h.clone());
                }
            }
            h = self.mid.0.forward(&h, Some(&emb))?;
            if let Some(a) = &self.mid.1 {
                h = a.forward(&h, &context, 0.0)?;
            }
            h = self.mid.2.forward(&h, Some(&emb))?;
            for ui in 0..self.up.len() {
                let n = self.up[ui].resnets.len();
                match &mut cache {
                    DeepCache::Refresh(slot) if ui == last => {
                        h = self.up_layers(ui, 0..cut, h, &mut skips, &cond)?;
                        **slot = Some(h.clone());
                        h = self.up_layers(ui, cut..n, h, &mut skips, &cond)?;
                    }
                    _ => h = self.up_layers(ui, 0..n, h, &mut skips, &cond)?,
                }
            }
        }
        let h = self.conv_out.forward(&self.norm_out.forward_silu(&h)?)?;
        Ok(h.to_dtype(DType::F32)?)
    }
}

/// What every layer of one UNet call sees: the timestep embedding, the text and the token
/// merging ratio.
#[derive(Clone, Copy)]
struct LayerCond<'a> {
    emb: &'a Tensor,
    context: &'a Tensor,
    token_merge: f64,
}

impl Unet {
    /// Layers `layers` of up block `ui` (each takes the next skip), then its upsampler if the
    /// range ends with the block.
    fn up_layers(
        &self,
        ui: usize,
        layers: std::ops::Range<usize>,
        mut h: Tensor,
        skips: &mut Vec<Tensor>,
        cond: &LayerCond,
    ) -> Result<Tensor> {
        let blk = &self.up[ui];
        let whole = layers.end == blk.resnets.len();
        let LayerCond { emb, context, token_merge } = *cond;
        let merge = if ui + 1 == self.up.len() { token_merge } else { 0.0 };
        for j in layers {
            let skip = skips
                .pop()
                .ok_or_else(|| EngineError::Other("UNet skip connections out of balance".into()))?;
            h = blk.resnets[j].forward(&Tensor::cat(&[&h, &skip], 1)?, Some(emb))?;
            if let Some(a) = blk.attentions.get(j) {
                h = a.forward(&h, context, merge)?;
            }
        }
        if whole && let Some(s) = &blk.sampler {
            // Upsample to the next skip's size, so sizes that are not a multiple of the
            // total downsampling factor still line up (as diffusers' upsample_size).
            let (th, tw) = match skips.last() {
                Some(next) => (next.dim(2)?, next.dim(3)?),
                None => (h.dim(2)? * 2, h.dim(3)? * 2),
            };
            h = s.forward(&h.upsample_nearest2d(th, tw)?)?;
        }
        Ok(h)
    }
}

/// `h + temb[:, :, None, None]`: on CUDA (inference) one per-(sample, channel) kernel.
fn add_time(h: &Tensor, temb: &Tensor) -> Result<Tensor> {
    #[cfg(feature = "cuda")]
    if crate::kernels::cuda_ops::applies(h) && !temb.track_op() {
        let (_, _, height, width) = h.dims4()?;
        return Ok(crate::kernels::cuda_ops::add_per_channel(h, &temb.flatten_all()?, height * width)?);
    }
    Ok(h.broadcast_add(&temb.unsqueeze(2)?.unsqueeze(3)?)?)
}

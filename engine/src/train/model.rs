//! The embedded model's architecture: the SD 1.x family (CLIP text encoder, conditional UNet,
//! KL autoencoder) at a size a 2-core CPU trains in about two hours and runs in about a second.

use crate::nets::config::{Activation, Family, ModelConfig, TextConfig, UnetConfig, VaeConfig};
use crate::protocol::Prediction;

/// The guidance scale the embedded model is made for (stored in its metadata; the window and
/// `generate` start from it). Chosen on prompts and seeds the tests do not use: 2 and 3 draw
/// all 24 right there, 2 with the truest colours; 5 and 7 over-saturate a small model's.
pub const GUIDANCE: f64 = 2.0;

/// Training images are this many pixels square.
pub const IMAGE_SIZE: u32 = 64;

/// Width of each size value's sinusoidal embedding when the UNet takes the pooled text
/// embedding ([`with_pooled_text`]), as SDXL's `addition_time_embed_dim` (256 there).
pub const POOLED_SIZE_EMBED: usize = 8;

/// `cfg` with SDXL's additional conditioning: the text encoder's output at the end token
/// (the whole prompt in one vector) plus the image size, through `add_embedding`, added to
/// the timestep embedding that every ResNet block sees. Cross-attention lets each latent
/// cell look up words; this gives every block the prompt at once.
pub fn with_pooled_text(mut cfg: ModelConfig) -> ModelConfig {
    let pooled = cfg.text.last().map_or(0, |t| t.projection.unwrap_or(t.hidden));
    cfg.unet.addition = Some((POOLED_SIZE_EMBED, pooled + 6 * POOLED_SIZE_EMBED));
    cfg
}

/// The embedded model's configuration (64x64 images, 8x8x4 latents: SD's factor 8).
pub fn embedded_config() -> ModelConfig {
    ModelConfig {
        family: Family::Sd1,
        text: vec![TextConfig {
            prefix: "te1.",
            vocab: 49408,
            hidden: 64,
            layers: 3,
            heads: 4,
            intermediate: 256,
            max_positions: 77,
            activation: Activation::QuickGelu,
            projection: None,
            pad_token: 49407,
        }],
        unet: UnetConfig {
            in_channels: 4,
            out_channels: 4,
            block_out_channels: vec![64, 128, 128],
            layers_per_block: 1,
            down_attention: vec![None, Some(1), Some(1)],
            up_attention: vec![Some(1), Some(1), None],
            mid_attention: Some(1),
            heads: vec![4, 4, 4],
            context_dim: 64,
            linear_projection: true,
            groups: 16,
            time_embed_dim: 256,
            addition: None,
        },
        vae: VaeConfig {
            latent_channels: 4,
            block_out_channels: vec![16, 32, 64, 64],
            layers_per_block: 1,
            groups: 16,
            scaling_factor: 1.0,
            mid_attention: true,
        },
        prediction: Prediction::V,
        text_layer_base: 1,
        few_step: false,
        zero_terminal_snr: false,
        default_size: (IMAGE_SIZE, IMAGE_SIZE),
        default_guidance: GUIDANCE,
    }
}

/// A list of tensor names and shapes being built.
#[derive(Default)]
struct Plan(Vec<(String, Vec<usize>)>);

impl Plan {
    fn conv(&mut self, p: &str, o: usize, i: usize, k: usize) {
        self.0.push((format!("{p}.weight"), vec![o, i, k, k]));
        self.0.push((format!("{p}.bias"), vec![o]));
    }
    fn norm(&mut self, p: &str, c: usize) {
        self.0.push((format!("{p}.weight"), vec![c]));
        self.0.push((format!("{p}.bias"), vec![c]));
    }
    fn resnet(&mut self, q: &str, i: usize, o: usize) {
        self.norm(&format!("{q}.norm1"), i);
        self.conv(&format!("{q}.conv1"), o, i, 3);
        self.norm(&format!("{q}.norm2"), o);
        self.conv(&format!("{q}.conv2"), o, o, 3);
        if i != o {
            self.conv(&format!("{q}.conv_shortcut"), o, i, 1);
        }
    }
}

/// The autoencoder's encoder tensors (`vae.encoder.*`, `vae.quant_conv`), which the
/// generation-only shape plan leaves out.
pub fn encoder_shapes(v: &VaeConfig) -> Vec<(String, Vec<usize>)> {
    let mut plan = Plan::default();
    let p = "vae.encoder";
    let ch = &v.block_out_channels;
    plan.conv(&format!("{p}.conv_in"), ch[0], 3, 3);
    let mut prev = ch[0];
    for (i, &c) in ch.iter().enumerate() {
        for j in 0..v.layers_per_block {
            plan.resnet(&format!("{p}.down_blocks.{i}.resnets.{j}"), if j == 0 { prev } else { c }, c);
        }
        if i + 1 < ch.len() {
            plan.conv(&format!("{p}.down_blocks.{i}.downsamplers.0.conv"), c, c, 3);
        }
        prev = c;
    }
    let top = *ch.last().unwrap_or(&prev);
    plan.resnet(&format!("{p}.mid_block.resnets.0"), top, top);
    if v.mid_attention {
        let a = format!("{p}.mid_block.attentions.0");
        plan.norm(&format!("{a}.group_norm"), top);
        for l in ["to_q", "to_k", "to_v", "to_out.0"] {
            plan.0.push((format!("{a}.{l}.weight"), vec![top, top]));
            plan.0.push((format!("{a}.{l}.bias"), vec![top]));
        }
    }
    plan.resnet(&format!("{p}.mid_block.resnets.1"), top, top);
    plan.norm(&format!("{p}.conv_norm_out"), top);
    plan.conv(&format!("{p}.conv_out"), 2 * v.latent_channels, top, 3);
    plan.conv("vae.quant_conv", 2 * v.latent_channels, 2 * v.latent_channels, 1);
    plan.0
}

/// Every tensor of the trained checkpoint: text encoder, UNet, decoder and encoder.
pub fn all_shapes(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let mut s = crate::nets::shapes::shapes(cfg);
    s.extend(encoder_shapes(&cfg.vae));
    s
}

/// A model small enough to train a few steps in a unit test.
#[cfg(test)]
pub(crate) fn tiny_config() -> ModelConfig {
    let mut cfg = embedded_config();
    cfg.text[0].hidden = 16;
    cfg.text[0].layers = 1;
    cfg.text[0].heads = 2;
    cfg.text[0].intermediate = 32;
    cfg.unet = UnetConfig {
        in_channels: 4,
        out_channels: 4,
        block_out_channels: vec![16, 32],
        layers_per_block: 1,
        down_attention: vec![None, Some(1)],
        up_attention: vec![Some(1), None],
        mid_attention: Some(1),
        heads: vec![2, 2],
        context_dim: 16,
        linear_projection: true,
        groups: 8,
        time_embed_dim: 64,
        addition: None,
    };
    cfg.vae = VaeConfig {
        latent_channels: 4,
        block_out_channels: vec![8, 16],
        layers_per_block: 1,
        groups: 4,
        scaling_factor: 1.0,
        mid_attention: true,
    };
    cfg.default_size = (16, 16);
    cfg
}

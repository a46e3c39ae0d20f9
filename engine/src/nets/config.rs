//! What each network is: the configurations the text encoders, the UNet and the VAE are built
//! from. Plain data; [`crate::checkpoint::architecture`] reads them off a checkpoint's
//! tensors, presets and the trainer write them by hand.

use crate::protocol::Prediction;

/// The model families the studio knows by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    Sd1,
    Sd2,
    Sdxl,
}

impl Family {
    /// Name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Family::Sd1 => "SD 1.x",
            Family::Sd2 => "SD 2.x",
            Family::Sdxl => "SDXL",
        }
    }
    /// Short tag for metadata and the CLI.
    pub fn tag(self) -> &'static str {
        match self {
            Family::Sd1 => "sd1",
            Family::Sd2 => "sd2",
            Family::Sdxl => "sdxl",
        }
    }
}

/// Text-encoder activation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    QuickGelu,
    Gelu,
}

/// A CLIP text transformer.
#[derive(Clone, Debug, PartialEq)]
pub struct TextConfig {
    pub prefix: &'static str,
    pub vocab: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub max_positions: usize,
    pub activation: Activation,
    /// Output width of `text_projection` (pooled embedding), when present.
    pub projection: Option<usize>,
    /// Token used to pad the 77 positions (EOS for OpenAI CLIP, 0 for OpenCLIP).
    pub pad_token: u32,
}

/// A conditional UNet (diffusers `UNet2DConditionModel` layout).
#[derive(Clone, Debug, PartialEq)]
pub struct UnetConfig {
    pub in_channels: usize,
    pub out_channels: usize,
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    /// Transformer depth of each down block's attentions (None: no attention).
    pub down_attention: Vec<Option<usize>>,
    /// Same for up blocks, in up-block order.
    pub up_attention: Vec<Option<usize>>,
    pub mid_attention: Option<usize>,
    /// Attention heads per down block (up blocks use them reversed, the mid block the last).
    pub heads: Vec<usize>,
    pub context_dim: usize,
    pub linear_projection: bool,
    pub groups: usize,
    pub time_embed_dim: usize,
    /// SDXL's size/crop conditioning: (per-value embedding width, total input width).
    pub addition: Option<(usize, usize)>,
}

/// A KL autoencoder's decoder.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    pub latent_channels: usize,
    /// Channels per level from the latent side's last level to the image side, as diffusers'
    /// `block_out_channels` (ascending order; the decoder walks it reversed).
    pub block_out_channels: Vec<usize>,
    pub layers_per_block: usize,
    pub groups: usize,
    pub scaling_factor: f64,
    pub mid_attention: bool,
}

impl VaeConfig {
    /// Pixels per latent along each axis.
    pub fn scale(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }
}

/// Everything needed to build the pipeline.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub family: Family,
    pub text: Vec<TextConfig>,
    pub unet: UnetConfig,
    pub vae: VaeConfig,
    pub prediction: Prediction,
    /// Hidden layer counted from the end (1 = last) that SD 1/2 read, before the user's clip
    /// skip: 2 for SD 2.x single files, whose OpenCLIP encoder keeps the unused last layer.
    pub text_layer_base: usize,
    /// A hint from the name or metadata that this is a distilled few-step model (Turbo, LCM).
    pub few_step: bool,
    /// Trained on SD's schedule rescaled to zero terminal SNR (`rescale_betas_zero_snr` in its
    /// metadata or scheduler config): generation uses that schedule too.
    pub zero_terminal_snr: bool,
    pub default_size: (u32, u32),
    /// The guidance scale the model is made for: its metadata's (`latent_studio.guidance`),
    /// else 1 for few-step models (Turbo, LCM: no CFG), else 7.
    pub default_guidance: f64,
}

/// The guidance scale of models that do not say otherwise (SD 1.x/2.x/SDXL's usual 7).
pub const DEFAULT_GUIDANCE: f64 = 7.0;

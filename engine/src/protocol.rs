//! The messages between the window (or CLI) and the engine thread: plain data, no tensors.

use std::path::PathBuf;
use std::time::Duration;

/// Identifies one generation request; chosen by the caller, echoed in every event of the job.
pub type JobId = u64;

/// Numeric precision of the loaded weights and of the computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DType {
    #[default]
    F32,
    F16,
    BF16,
}

impl DType {
    /// Parses the names the CLI and settings use (`f32`, `f16`, `bf16`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Some(Self::F32),
            "f16" | "fp16" | "float16" | "half" => Some(Self::F16),
            "bf16" | "bfloat16" => Some(Self::BF16),
            _ => None,
        }
    }
    /// The short name used in metadata and the status bar.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
        }
    }
}

/// Where the networks run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl DeviceKind {
    /// Parses `cpu`, `cuda`, `cuda:1`, `metal`.
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.to_ascii_lowercase();
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => (n.to_string(), i.parse().ok()?),
            None => (s.clone(), 0),
        };
        match name.as_str() {
            "cpu" => Some(Self::Cpu),
            "cuda" | "gpu" => Some(Self::Cuda(index)),
            "metal" | "mps" => Some(Self::Metal(index)),
            _ => None,
        }
    }
}

/// Whether the network predicts noise (eps), velocity (v) or the clean sample; only some
/// checkpoints say so in their metadata, so the user may override it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Prediction {
    Epsilon,
    V,
}

/// What to load.
/// Whether the VAE decodes big images in overlapping tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum VaeTiling {
    /// Tile only when decoding the whole image would not fit in memory.
    #[default]
    Auto,
    /// Never tile (exact, but memory grows with the image).
    Off,
    /// Always tile, with square tiles of this many latent pixels.
    Tile(usize),
}

impl VaeTiling {
    /// Parses `auto`, `off` or a tile size in latent pixels.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Some(Self::Auto),
            "off" | "none" => Some(Self::Off),
            n => n.parse().ok().filter(|v| *v > 0).map(Self::Tile),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct ModelSpec {
    /// A single `.safetensors` file or a diffusers folder.
    pub path: PathBuf,
    pub dtype: DType,
    pub device: DeviceKind,
    /// Overrides what the checkpoint says or what is inferred.
    pub prediction: Option<Prediction>,
    pub vae_tiling: VaeTiling,
    /// A VAE to use instead of the checkpoint's own (single file or diffusers folder).
    pub vae: Option<PathBuf>,
    /// A tiny decoder (TAESD family) for the step previews instead of the latent projection.
    pub tiny_decoder: Option<PathBuf>,
    /// A whole checkpoint (file or diffusers folder) lending the text encoders and the VAE
    /// that `path` lacks (a UNet-only file: ComfyUI-GGUF's, ComfyUI's `models/unet`).
    pub components: Option<PathBuf>,
}

impl ModelSpec {
    /// A CPU, f32 spec for `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            dtype: DType::F32,
            device: DeviceKind::Cpu,
            prediction: None,
            vae_tiling: VaeTiling::Auto,
            vae: None,
            tiny_decoder: None,
            components: None,
        }
    }
}

/// A LoRA to apply with its strength (negative strengths subtract the style).
#[derive(Clone, Debug, PartialEq)]
pub struct LoraSpec {
    pub path: PathBuf,
    pub strength: f32,
    /// A separate strength for the text encoder(s); None = `strength`.
    pub text_strength: Option<f32>,
}

impl LoraSpec {
    /// A LoRA at `strength` for every part of the model.
    pub fn new(path: impl Into<PathBuf>, strength: f32) -> Self {
        Self {
            path: path.into(),
            strength,
            text_strength: None,
        }
    }
}

/// One image to make. Validated into a typed job by the engine before any work starts.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative: String,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub cfg_scale: f64,
    pub seed: u64,
    /// Solver name as listed by `latent-studio solvers` (`euler`, `dpm++2m`, `unipc`, ...).
    pub solver: String,
    /// Schedule name (`default`, `karras`, `trailing`, ...; see `latent-studio solvers`).
    pub schedule: String,
    /// Noise scale of solvers that have one (DDIM's eta, ancestral solvers); None = default.
    pub eta: Option<f64>,
    /// Guidance rescale phi (Lin et al. 2023), 0 = off.
    pub cfg_rescale: f64,
    /// Fraction of the steps that use classifier-free guidance; later steps run the
    /// conditional pass only (half the cost). 1 = guidance throughout.
    pub cfg_until: f64,
    /// A1111's "Clip skip": 1 uses the last layer, 2 the one before, ...
    pub clip_skip: u32,
    /// Emit a latent preview every this many steps (0 = never).
    pub preview_every: u32,
    /// Feature cache (DeepCache): run the whole UNet every this many steps and only its top
    /// level in between, reusing the deeper features. 1 = off.
    pub feature_cache: u32,
    /// Token merging (ToMe for SD): share of the top level's tokens merged away before each
    /// self-attention. 0 = off; 0.3-0.5 are usual.
    pub token_merge: f64,
    /// How `(word:1.2)` weights act on the text encoding (A1111's "Emphasis" setting).
    #[serde(default)]
    pub emphasis: Emphasis,
    /// Image to image: the picture to start from, at the request's size (the CLI and the
    /// window resize it first). None = text to image.
    #[serde(skip)]
    pub init_image: Option<std::sync::Arc<ImageRgb8>>,
    /// Image to image: how much of the schedule runs (A1111's "Denoising strength"):
    /// `int(steps * strength)` steps from the matching noise level, as diffusers'
    /// `StableDiffusionImg2ImgPipeline`.
    #[serde(default = "default_strength")]
    pub strength: f64,
    /// Inpainting: where to repaint (white) and keep (black), the init image's size; its
    /// luminance is read as PIL's `convert("L")` and cut at one half, as diffusers does.
    #[serde(skip)]
    pub mask: Option<std::sync::Arc<ImageRgb8>>,
    /// Inpainting: Gaussian blur (sigma, pixels) of the mask the result is pasted over the
    /// picture with, as A1111's "Mask blur": outside the blurred mask the picture's own pixels.
    #[serde(default = "default_mask_blur")]
    pub mask_blur: u32,
    /// Inpainting: repaint at the request's size the whole picture, or only the region
    /// around the mask (A1111's "Inpaint area"). With `Masked` the init image and mask are
    /// the picture's own size: the engine cuts the mask's bounding box grown by
    /// `masked_padding` pixels (and to the request's aspect ratio), works on it at the
    /// request's size and pastes the result back, so the output is the picture's size.
    #[serde(default)]
    pub inpaint_area: InpaintArea,
    /// Inpainting with `InpaintArea::Masked`: pixels around the mask's bounding box.
    #[serde(default = "default_masked_padding")]
    pub masked_padding: u32,
    /// Inpainting: what the masked region starts from (A1111's "Masked content").
    #[serde(default)]
    pub masked_content: MaskedContent,
    /// Hires fix: after the image is made at this size, its latents are upscaled and a
    /// second image-to-image pass runs at the larger size (A1111's "Hires. fix").
    #[serde(default)]
    pub hires: Option<Hires>,
}

/// A1111's hires fix: upscale factor, second-pass steps (0 = the first pass's), denoising
/// strength of the second pass, and how the first pass is enlarged.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hires {
    pub scale: f64,
    pub steps: u32,
    pub strength: f64,
    pub upscaler: HiresUpscaler,
    /// With `HiresUpscaler::Model`: the ESRGAN-family `.safetensors` file.
    #[serde(default)]
    pub model: Option<std::path::PathBuf>,
}

impl Hires {
    /// The metadata's `Hires upscaler`: A1111's name, or the model file's stem as A1111
    /// names the files of its `models/ESRGAN` folder.
    pub fn upscaler_name(&self) -> String {
        match (self.upscaler, &self.model) {
            (HiresUpscaler::Model, Some(p)) => p
                .file_stem()
                .map_or_else(|| "upscaler".into(), |s| s.to_string_lossy().into_owned()),
            (u, _) => u.name().into(),
        }
    }
}

/// How the hires fix enlarges the first pass: its latents (torch's `interpolate`), or its
/// decoded picture (PIL's Lanczos, or an ESRGAN-family model) encoded again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum HiresUpscaler {
    /// Bilinear (A1111's "Latent": `interpolate(mode="bilinear")`).
    #[default]
    Latent,
    /// Nearest neighbour (A1111's "Latent (nearest)").
    LatentNearest,
    /// Bicubic with antialiasing (A1111's "Latent (bicubic antialiased)").
    LatentBicubicAntialiased,
    /// The decoded picture resized with Lanczos (A1111's "Lanczos").
    Lanczos,
    /// The decoded picture enlarged by an upscaler model ([`Hires::model`]).
    Model,
}

impl HiresUpscaler {
    /// The built-in ones (a model is named by its file).
    pub const ALL: [HiresUpscaler; 4] = [
        HiresUpscaler::Latent,
        HiresUpscaler::LatentNearest,
        HiresUpscaler::LatentBicubicAntialiased,
        HiresUpscaler::Lanczos,
    ];

    /// A1111's name of it (the metadata's `Hires upscaler`).
    pub fn name(self) -> &'static str {
        match self {
            HiresUpscaler::Latent => "Latent",
            HiresUpscaler::LatentNearest => "Latent (nearest)",
            HiresUpscaler::LatentBicubicAntialiased => "Latent (bicubic antialiased)",
            HiresUpscaler::Lanczos => "Lanczos",
            HiresUpscaler::Model => "Upscaler model",
        }
    }

    /// Whether the first pass is decoded, enlarged as a picture and encoded again.
    pub fn in_pixels(self) -> bool {
        matches!(self, HiresUpscaler::Lanczos | HiresUpscaler::Model)
    }

    /// A built-in upscaler by A1111's name (or `nearest`, `bicubic`); any other name is a
    /// model's.
    pub fn parse(s: &str) -> Option<HiresUpscaler> {
        let k = s.trim().to_ascii_lowercase();
        let short = match k.as_str() {
            "latent" | "bilinear" => Some(HiresUpscaler::Latent),
            "nearest" => Some(HiresUpscaler::LatentNearest),
            "bicubic" => Some(HiresUpscaler::LatentBicubicAntialiased),
            _ => None,
        };
        short.or_else(|| HiresUpscaler::ALL.into_iter().find(|u| u.name().to_ascii_lowercase() == k))
    }
}

/// Where an inpainting job works (A1111's "Inpaint area").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum InpaintArea {
    /// The whole picture at the request's size ("Whole picture").
    #[default]
    Whole,
    /// The mask's region, enlarged to the request's size and pasted back ("Only masked").
    Masked,
}

impl InpaintArea {
    /// A1111's name of it (the metadata's `Inpaint area`).
    pub fn name(self) -> &'static str {
        match self {
            InpaintArea::Whole => "Whole picture",
            InpaintArea::Masked => "Only masked",
        }
    }

    pub fn parse(s: &str) -> Option<InpaintArea> {
        match s.trim().to_ascii_lowercase().as_str() {
            "whole picture" | "whole" => Some(InpaintArea::Whole),
            "only masked" | "masked" => Some(InpaintArea::Masked),
            _ => None,
        }
    }
}

/// What the masked region of an inpainting job starts from (A1111's "Masked content").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MaskedContent {
    /// The picture as it is.
    #[default]
    Original,
    /// The picture's surrounding colours blurred into the hole (A1111's "fill").
    Fill,
    /// The latents under the mask replaced by fresh Gaussian noise.
    LatentNoise,
    /// The latents under the mask set to zero.
    LatentNothing,
}

impl MaskedContent {
    pub const ALL: [MaskedContent; 4] = [
        MaskedContent::Original,
        MaskedContent::Fill,
        MaskedContent::LatentNoise,
        MaskedContent::LatentNothing,
    ];

    /// A1111's name of it (the metadata's `Masked content`).
    pub fn name(self) -> &'static str {
        match self {
            MaskedContent::Original => "original",
            MaskedContent::Fill => "fill",
            MaskedContent::LatentNoise => "latent noise",
            MaskedContent::LatentNothing => "latent nothing",
        }
    }

    pub fn parse(s: &str) -> Option<MaskedContent> {
        let k = s.trim().to_ascii_lowercase().replace(['-', '_'], " ");
        let k = match k.as_str() {
            "noise" => "latent noise",
            "nothing" | "zero" | "zeros" => "latent nothing",
            other => other,
        }
        .to_string();
        MaskedContent::ALL.into_iter().find(|m| m.name() == k)
    }
}

fn default_masked_padding() -> u32 {
    32
}

fn default_strength() -> f64 {
    0.75
}

fn default_mask_blur() -> u32 {
    4
}

/// How prompt weights act on the text encoder's output.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Emphasis {
    /// A1111's default: each token's hidden state times its weight, then the whole encoding
    /// rescaled to its original mean.
    #[default]
    Original,
    /// A1111's "No norm": times the weight, no rescaling.
    NoNorm,
    /// ComfyUI's: a weighted token moves away from the empty prompt's encoding at its
    /// position, `empty + (z - empty) * weight`.
    Comfy,
    /// A1111's "Ignore": brackets and `BREAK` are read, the weights are not used.
    Ignore,
    /// A1111's "None": no attention syntax at all; brackets are text.
    None,
}

impl Emphasis {
    pub const ALL: [Emphasis; 5] = [
        Emphasis::Original,
        Emphasis::NoNorm,
        Emphasis::Comfy,
        Emphasis::Ignore,
        Emphasis::None,
    ];

    /// The name A1111 writes after `Emphasis:` in the parameters (ComfyUI's is ours).
    pub fn name(self) -> &'static str {
        match self {
            Emphasis::Original => "Original",
            Emphasis::NoNorm => "No norm",
            Emphasis::Comfy => "Comfy",
            Emphasis::Ignore => "Ignore",
            Emphasis::None => "None",
        }
    }

    /// From the metadata name or a command-line spelling (`no-norm`), any case.
    pub fn parse(s: &str) -> Option<Emphasis> {
        let k: String = s
            .trim()
            .to_ascii_lowercase()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .collect();
        Emphasis::ALL
            .into_iter()
            .find(|e| e.name().to_ascii_lowercase().replace(' ', "") == k)
    }
}

impl Default for GenerateRequest {
    fn default() -> Self {
        Self {
            prompt: String::new(),
            negative: String::new(),
            width: 512,
            height: 512,
            steps: 20,
            cfg_scale: 7.0,
            seed: 0,
            solver: "euler".into(),
            schedule: "default".into(),
            eta: None,
            cfg_rescale: 0.0,
            cfg_until: 1.0,
            clip_skip: 1,
            preview_every: 1,
            feature_cache: 1,
            token_merge: 0.0,
            emphasis: Emphasis::Original,
            init_image: None,
            strength: default_strength(),
            mask: None,
            mask_blur: default_mask_blur(),
            inpaint_area: InpaintArea::Whole,
            masked_padding: default_masked_padding(),
            masked_content: MaskedContent::Original,
            hires: None,
        }
    }
}

/// An 8-bit RGB image, row-major, no padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRgb8 {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// What the engine knows about the loaded model.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelInfo {
    pub name: String,
    pub family: String,
    pub summary: String,
    pub dtype: DType,
    pub device: String,
    pub default_size: (u32, u32),
    /// The guidance scale the model is made for (7 for most, 1 for Turbo/LCM).
    pub default_guidance: f64,
}

/// Where the time of one image went.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timings {
    pub text: Duration,
    pub denoise: Duration,
    pub vae: Duration,
    pub previews: Duration,
    pub total: Duration,
    /// Network evaluations actually spent (CFG's double pass counted).
    pub nfe: u32,
    /// Of those, the ones that ran only the UNet's top level (the feature cache).
    pub shallow_nfe: u32,
}

/// Window/CLI -> engine.
#[derive(Debug)]
pub enum Command {
    LoadModel(ModelSpec),
    Generate {
        id: JobId,
        request: GenerateRequest,
    },
    SetLoras(Vec<LoraSpec>),
    /// Enlarge a picture with an upscaler model; answered as a `Generate` is (`Started`,
    /// `Progress` per tile, then `Finished` without latents, `Cancelled` or `Failed`).
    Upscale {
        id: JobId,
        request: UpscaleRequest,
    },
    /// The solver lab (see [`CompareRequest`]).
    Compare {
        id: JobId,
        request: CompareRequest,
    },
    /// Usually sent through `EngineHandle::cancel`, which also flips the job's atomic flag.
    Cancel(JobId),
    Shutdown,
}

/// A picture enlarged by an ESRGAN-family model (A1111's Extras > Upscale); needs no model
/// loaded.
#[derive(Clone, Debug)]
pub struct UpscaleRequest {
    pub image: std::sync::Arc<ImageRgb8>,
    /// The upscaler's `.safetensors` file.
    pub model: PathBuf,
    /// The picture's own parameters text: the result keeps it, with A1111's
    /// `Postprocess upscale by` and `Postprocess upscaler` added to its settings line.
    pub parameters: String,
    /// Tile size in input pixels (smaller needs less memory) and the overlap computed on
    /// every side of a tile and thrown away (so seams do not show).
    pub tile: u32,
    pub overlap: u32,
}

/// The solver lab: one prompt and seed run by several solvers at equal cost (NFE budgets,
/// CFG's second pass counted), each cell measured against a long reference run of the same
/// seed. Answered as a `Generate` is, with a `CompareCell` event per cell before `Finished`
/// (which carries the reference picture).
#[derive(Clone, Debug, PartialEq)]
pub struct CompareRequest {
    /// Prompt, seed, size, guidance, schedule (its solver and steps are not used).
    pub base: GenerateRequest,
    pub solvers: Vec<String>,
    pub budgets: Vec<u32>,
    pub reference_solver: String,
    pub reference_steps: u32,
}

/// One cell of a comparison: a solver at a budget.
#[derive(Clone, Debug, PartialEq)]
pub struct CompareCell {
    pub solver: String,
    pub budget: u32,
    /// 0 when the budget buys no step (a budget of 1 with CFG); nothing below is then set.
    pub steps: u32,
    /// Network evaluations the run spent (the budget, or the nearest below where the
    /// solver's step cost does not divide it).
    pub nfe: u32,
    pub time: Duration,
    /// ||x - x_ref|| / ||x_ref|| over the final latents.
    pub latent_rel_l2: f64,
    /// Of the decoded pictures, in dB (infinite when identical).
    pub psnr: f64,
    pub image: Option<ImageRgb8>,
    pub metadata: String,
}

/// Engine -> window/CLI. For each `Generate`: `Started`, `Progress` counting up from 1, then
/// exactly one of `Finished`, `Cancelled` or `Failed`; a job rejected before it starts (bad
/// request, cancelled while queued, no model) yields only its final event.
#[derive(Clone, Debug)]
pub enum Event {
    ModelLoaded {
        info: ModelInfo,
    },
    /// The LoRA set changed: one report per file (layers applied / total, unmatched keys).
    LorasApplied {
        reports: Vec<LoraReport>,
    },
    Started {
        id: JobId,
        total_steps: u32,
        nfe: u32,
    },
    Progress {
        id: JobId,
        step: u32,
        total_steps: u32,
        step_time: Duration,
    },
    Preview {
        id: JobId,
        step: u32,
        image: ImageRgb8,
    },
    Finished {
        id: JobId,
        image: ImageRgb8,
        metadata: String,
        timings: Timings,
        latents: Option<LatentsOut>,
    },
    /// A finished cell of a `Compare` job.
    CompareCell {
        id: JobId,
        cell: Box<CompareCell>,
    },
    Cancelled {
        id: JobId,
        at_step: u32,
    },
    Failed {
        id: Option<JobId>,
        error: String,
    },
    Warning {
        id: Option<JobId>,
        message: String,
    },
}

impl Event {
    /// The job this event belongs to, if any.
    pub fn job(&self) -> Option<JobId> {
        match self {
            Event::Started { id, .. }
            | Event::Progress { id, .. }
            | Event::Preview { id, .. }
            | Event::Finished { id, .. }
            | Event::CompareCell { id, .. }
            | Event::Cancelled { id, .. } => Some(*id),
            Event::Failed { id, .. } | Event::Warning { id, .. } => *id,
            Event::ModelLoaded { .. } | Event::LorasApplied { .. } => None,
        }
    }
    /// True for the events that end a job.
    pub fn is_final(&self) -> bool {
        matches!(
            self,
            Event::Finished { .. } | Event::Cancelled { .. } | Event::Failed { id: Some(_), .. }
        )
    }
}

/// Final latents (before VAE decode) as plain numbers, for `--latents-out` and tests.
#[derive(Clone, Debug, PartialEq)]
pub struct LatentsOut {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// What a LoRA merge did, per file: shown to the user after every change.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoraReport {
    pub name: String,
    /// Modules applied / modules in the file.
    pub applied: usize,
    pub total: usize,
    /// Module keys that matched no layer of the model, and tensors that are not LoRA parts.
    pub unmatched: Vec<String>,
}

impl LoraReport {
    /// One line for the status bar / CLI.
    pub fn summary(&self) -> String {
        let mut s = format!("{}: {}/{} layers applied", self.name, self.applied, self.total);
        if !self.unmatched.is_empty() {
            let shown: Vec<&str> = self.unmatched.iter().take(3).map(String::as_str).collect();
            s.push_str(&format!(
                "; {} not matched ({}{})",
                self.unmatched.len(),
                shown.join(", "),
                if self.unmatched.len() > 3 { ", ..." } else { "" }
            ));
        }
        s
    }
}

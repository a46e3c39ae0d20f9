//! A loaded model and the tasks it runs. `Pipeline` owns the networks and the LoRA state
//! (mod.rs); a request becomes a validated [`Job`] with its planned cost (job.rs); text
//! becomes conditioning (text.rs); every task samples through one guided denoiser
//! (guided.rs) and decodes through one VAE path (here). txt2img.rs starts text to image and
//! image to image; inpaint.rs inpainting (4-channel blend, 9-channel model input); hires fix
//! will be a sibling.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::{DType as CDType, Device, Tensor};

use crate::checkpoint::{self, architecture};
use crate::error::{EngineError, Result};
use crate::nets::clip::ClipText;
use crate::nets::config::{Family, ModelConfig};
use crate::nets::unet::Unet;
use crate::nets::vae::{VaeDecoder, VaeTiling};
use crate::nets::weights::Weights;
use crate::preview::{LatentRgb, to_u8};
use crate::protocol::{DType, DeviceKind, ImageRgb8, LatentsOut, ModelInfo, ModelSpec, Prediction, Timings};
use crate::sampling::schedule::ModelSchedule;

pub mod compare;
mod guided;
mod hires;
mod inpaint;
mod job;
pub mod masked_area;
mod resample;
mod text;
mod txt2img;

pub use hires::{prepare_upscale, run_upscale};
pub use inpaint::overlay;
pub use job::{Job, MAX_FEATURE_CACHE, MAX_TOKEN_MERGE, planned_nfe, request_nfe, request_whole_nfe, steps_for_budget};
pub use text::{ScheduledConditioning, TextInput};

/// Opens the candle device for `kind`, with a clear error where this build lacks it.
pub fn open_device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda(i) => Device::new_cuda(i).map_err(|e| EngineError::DeviceUnavailable(format!("cuda:{i} ({e})"))),
        DeviceKind::Metal(i) => Device::new_metal(i).map_err(|e| EngineError::DeviceUnavailable(format!("metal:{i} ({e})"))),
    }
}

/// Whether `--dtype bf16` on a CPU with bf16 instructions keeps this tensor bf16: the
/// matrices of linear layers and convolutions with an even depth (the kernels pair k), but
/// not embeddings, the first convolutions (their dtype is the activations') or anything of
/// rank 1.
pub fn stays_bf16_on_cpu(name: &str, dims: &[usize]) -> bool {
    let depth: usize = dims.iter().skip(1).product();
    name.ends_with(".weight")
        && (dims.len() == 2 || dims.len() == 4)
        && depth.is_multiple_of(2)
        && !name.contains("embedding")
        && !name.contains("conv_in")
}

fn candle_dtype(d: DType) -> CDType {
    match d {
        DType::F32 => CDType::F32,
        DType::F16 => CDType::F16,
        DType::BF16 => CDType::BF16,
    }
}

/// What `info` and the status bar show about a loaded checkpoint.
#[derive(Clone, Debug, Default)]
pub struct LoadReport {
    pub unrecognised: Vec<String>,
    pub stored_dtypes: Vec<String>,
    pub parameters: Vec<(String, usize)>,
    pub bytes: u64,
}

/// Reads a checkpoint and infers its configuration without building the networks.
pub fn inspect(path: &Path) -> Result<(ModelConfig, LoadReport)> {
    let w = checkpoint::load_shapes(path)?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("model");
    let cfg = architecture::infer(&w, name)?;
    Ok((cfg, report(&w)))
}

fn report(w: &Weights) -> LoadReport {
    let mut parameters = vec![];
    for (label, prefix) in [
        ("text encoder", "te1."),
        ("text encoder 2", "te2."),
        ("unet", "unet."),
        ("vae", "vae."),
    ] {
        let n = w.parameters(prefix);
        if n > 0 {
            parameters.push((label.to_string(), n));
        }
    }
    LoadReport {
        unrecognised: w.unrecognised.clone(),
        stored_dtypes: w.stored_dtypes.iter().cloned().collect(),
        parameters,
        bytes: w.bytes,
    }
}

/// What the pipeline tells its caller while it runs.
pub trait Hooks {
    /// Polled before every network evaluation.
    fn cancelled(&self) -> bool;
    /// Step `step` of `total` finished.
    fn progress(&mut self, step: u32, total: u32, step_time: Duration);
    /// Whether a preview of step `step` is wanted (previews cost a little).
    fn wants_preview(&self, step: u32) -> bool;
    /// A preview of the clean estimate at `step`.
    fn preview(&mut self, step: u32, image: ImageRgb8);
    /// Something the user should know that does not stop the job (unmatched LoRA layers).
    fn warning(&mut self, _message: String) {}
    /// A cell of a solver comparison is done.
    fn cell(&mut self, _cell: &crate::protocol::CompareCell) {}
}

/// Hooks that never cancel and want no previews: for driving a [`Pipeline`] directly (tests,
/// benchmarks, scripts).
pub struct Quiet;

impl Hooks for Quiet {
    fn cancelled(&self) -> bool {
        false
    }
    fn progress(&mut self, _: u32, _: u32, _: Duration) {}
    fn wants_preview(&self, _: u32) -> bool {
        false
    }
    fn preview(&mut self, _: u32, _: ImageRgb8) {}
}

/// The result of one generation.
#[derive(Clone, Debug)]
pub struct Output {
    pub image: ImageRgb8,
    pub latents: LatentsOut,
    pub metadata: String,
    pub timings: Timings,
}

/// A loaded model ready to generate.
pub struct Pipeline {
    pub config: ModelConfig,
    pub name: String,
    pub path: PathBuf,
    pub report: LoadReport,
    pub hash: Option<String>,
    /// The VAE file used instead of the checkpoint's own: its file name and short hash.
    pub vae_override: Option<(String, Option<String>)>,
    /// The checkpoint that lent the text encoders and/or VAE (`ModelSpec::components`): its
    /// file name and short hash.
    pub components: Option<(String, Option<String>)>,
    text: Vec<ClipText>,
    unet: Unet,
    vae: VaeDecoder,
    /// The checkpoint's own weights (W0), kept so LoRA changes always start from them; they
    /// share storage with the networks, so keeping them costs nothing until a LoRA is merged.
    base: Weights,
    lora_table: Option<std::collections::HashMap<String, String>>,
    /// Name, short hash and strength of each LoRA file merged now, for the metadata.
    lora_hashes: Vec<(String, String, f32)>,
    device: Device,
    dtype: DType,
    schedule: ModelSchedule,
    preview: LatentRgb,
    /// Whether the VAE decodes big images in tiles (default: when memory would not fit).
    pub vae_tiling: VaeTiling,
    /// The tiny decoder the previews use, when one is loaded (else the latent projection).
    pub tiny: Option<crate::nets::taesd::TinyDecoder>,
    /// Folders searched for textual-inversion embeddings named in prompts.
    pub embedding_dirs: Vec<PathBuf>,
    /// Embedding files read so far (by path).
    embedding_cache: std::sync::Mutex<std::collections::HashMap<PathBuf, crate::checkpoint::embedding::Embedding>>,
    /// The hires fix's upscaler model, kept while the same file is asked for.
    upscaler_cache: std::sync::Mutex<Option<(PathBuf, std::sync::Arc<crate::nets::esrgan::Esrgan>)>>,
}

/// Memory one VAE decode may use: half of what the system has available now (Linux's
/// `MemAvailable`), or 4 GiB where that is unknown.
pub fn decode_budget() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("MemAvailable:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map(|kib| kib * 1024 / 2)
        .unwrap_or(4 << 30)
}

/// Puts the VAE of `path` in place of the checkpoint's: its tensors replace every `vae.*`
/// tensor, its configuration the VAE part of `cfg` (the checkpoint's scaling factor is kept
/// unless the VAE's own config gives one). A VAE whose latent channels differ from the
/// model's is refused, naming both.
fn replace_vae(w: &mut Weights, cfg: &mut ModelConfig, path: &Path, dtype: CDType, device: &Device) -> Result<()> {
    let v = checkpoint::load_vae(path, dtype, device)?;
    let own_scaling = v
        .configs
        .get("vae")
        .and_then(|c| c.get("scaling_factor"))
        .and_then(serde_json::Value::as_f64);
    w.tensors.retain(|k, _| !k.starts_with("vae."));
    w.quantized.retain(|k, _| !k.starts_with("vae."));
    w.shapes.retain(|k, _| !k.starts_with("vae."));
    w.tensors.extend(v.tensors);
    w.quantized.extend(v.quantized);
    w.shapes.extend(v.shapes);
    match v.configs.get("vae") {
        Some(c) => w.configs.insert("vae".into(), c.clone()),
        None => w.configs.remove("vae"),
    };
    let merged = architecture::infer(w, &cfg_name(path))?;
    if merged.vae.latent_channels != cfg.vae.latent_channels {
        return Err(EngineError::InvalidRequest(format!(
            "VAE {} has {} latent channels, the model {}: it is a VAE for another family",
            path.display(),
            merged.vae.latent_channels,
            cfg.vae.latent_channels
        )));
    }
    let scaling = own_scaling.unwrap_or(cfg.vae.scaling_factor);
    cfg.vae = merged.vae;
    cfg.vae.scaling_factor = scaling;
    Ok(())
}

fn cfg_name(path: &Path) -> String {
    path.file_stem().and_then(|n| n.to_str()).unwrap_or("vae").to_string()
}

impl Pipeline {
    /// Loads a checkpoint (single file or diffusers folder) and builds the networks.
    pub fn load(spec: &ModelSpec) -> Result<Self> {
        let device = open_device(spec.device)?;
        let mut w = checkpoint::load(&spec.path, candle_dtype(spec.dtype), &device)?;
        let name = spec
            .path
            .file_stem()
            .and_then(|n| n.to_str())
            .map(|s| s.to_string())
            .unwrap_or_else(|| "model".into());
        let components = match &spec.components {
            Some(c) => {
                let from = checkpoint::load_components(c, candle_dtype(spec.dtype), &device)?;
                let taken = checkpoint::take_components(&mut w, from)?;
                let file = c.file_name().and_then(|n| n.to_str()).unwrap_or("components").to_string();
                Some((file, if c.is_file() { checkpoint::short_hash(c) } else { None }, taken))
            }
            None => None,
        };
        let mut cfg = architecture::infer(&w, &name).map_err(|e| match (&components, e) {
            (Some((file, _, taken)), EngineError::UnknownArchitecture(m)) => EngineError::UnknownArchitecture(format!(
                "{m} ({} taken from {file}: is it a checkpoint of the UNet's family?)",
                if taken.is_empty() {
                    "nothing".to_string()
                } else {
                    taken.join(" and ")
                }
            )),
            (_, e) => e,
        })?;
        if let Some(p) = spec.prediction {
            cfg.prediction = p;
        }
        let vae_override = match &spec.vae {
            Some(v) => {
                replace_vae(&mut w, &mut cfg, v, candle_dtype(spec.dtype), &device)?;
                let file = v.file_name().and_then(|n| n.to_str()).unwrap_or("vae").to_string();
                Some((file, if v.is_file() { checkpoint::short_hash(v) } else { None }))
            }
            None => None,
        };
        let hash = if spec.path.is_file() {
            checkpoint::short_hash(&spec.path)
        } else {
            None
        };
        let mut pipe = Self::from_weights(w, cfg, &name, spec.dtype, device)?;
        pipe.path = spec.path.clone();
        pipe.hash = hash;
        pipe.vae_override = vae_override;
        pipe.components = components
            .filter(|(_, _, taken)| !taken.is_empty())
            .map(|(file, hash, _)| (file, hash));
        if let Some(t) = &spec.tiny_decoder {
            pipe.tiny = Some(pipe.load_tiny(t)?);
        }
        pipe.vae_tiling = spec.vae_tiling;
        Ok(pipe)
    }

    /// Builds the networks from weights already in memory (checkpoints, synthetic models).
    pub fn from_weights(mut w: Weights, cfg: ModelConfig, name: &str, dtype: DType, device: Device) -> Result<Self> {
        if dtype == DType::BF16 && device.is_cpu() {
            // On a CPU with AVX-512 BF16 the matrices of linear layers and convolutions stay
            // bf16 and multiply f32 activations (kernels::cpu_bf16); everything else (norms,
            // biases, embeddings, the first convolutions, which set the activations' dtype)
            // computes in f32. Elsewhere candle 0.11 has no fast bf16 matrix product on the
            // CPU: keep bf16's rounding of the weights but compute in f32.
            let hardware = crate::kernels::cpu_bf16::hardware();
            for (name, t) in w.tensors.iter_mut() {
                if !(hardware && stays_bf16_on_cpu(name, t.dims()) && t.dtype().is_float()) {
                    *t = t.to_dtype(CDType::F32)?;
                } else if t.dtype() != CDType::BF16 {
                    *t = t.to_dtype(CDType::BF16)?;
                }
            }
            for (name, q) in w.quantized.iter_mut() {
                q.dtype = if hardware && stays_bf16_on_cpu(name, &q.shape) {
                    CDType::BF16
                } else {
                    CDType::F32
                };
            }
        }
        let text = cfg.text.iter().map(|t| ClipText::new(&w, t)).collect::<Result<Vec<_>>>()?;
        let unet = Unet::new(&w, &cfg.unet)?;
        let vae = VaeDecoder::new(&w, &cfg.vae)?;
        let report = report(&w);
        let schedule = ModelSchedule::for_model(cfg.zero_terminal_snr);
        let preview = LatentRgb::from_metadata(&w.metadata).unwrap_or(if cfg.family == Family::Sdxl {
            LatentRgb::SDXL
        } else {
            LatentRgb::SD1
        });
        Ok(Self {
            config: cfg,
            name: name.to_string(),
            path: PathBuf::new(),
            report,
            hash: None,
            vae_override: None,
            components: None,
            text,
            unet,
            vae,
            base: w,
            lora_table: None,
            lora_hashes: vec![],
            device,
            dtype,
            schedule,
            preview,
            vae_tiling: VaeTiling::Auto,
            tiny: None,
            embedding_dirs: vec![],
            embedding_cache: Default::default(),
            upscaler_cache: Default::default(),
        })
    }

    /// How many weight tensors stay bf16 (`--dtype bf16` on a CPU with AVX-512 BF16: the
    /// matrices [`stays_bf16_on_cpu`] picks); 0 otherwise.
    pub fn cpu_bf16_matrices(&self) -> usize {
        let dense = self.base.tensors.values().filter(|t| t.dtype() == CDType::BF16).count();
        dense + self.base.quantized.values().filter(|q| q.dtype == CDType::BF16).count()
    }

    /// The checkpoint's own weights (what LoRA merges start from).
    pub fn base_weights(&self) -> &Weights {
        &self.base
    }

    /// Summary for the window and the CLI.
    /// Hidden width of each text encoder (SDXL's context joins them in this order).
    pub fn text_widths(&self) -> Vec<usize> {
        self.text.iter().map(|t| t.config.hidden).collect()
    }

    pub fn info(&self) -> ModelInfo {
        let c = &self.config;
        let pred = match c.prediction {
            Prediction::Epsilon => "eps",
            Prediction::V => "v",
        };
        let cpu_bf16 = self.dtype == DType::BF16 && self.device.is_cpu();
        ModelInfo {
            name: self.name.clone(),
            family: c.family.name().to_string(),
            summary: format!(
                "{} UNet {:?}, context {}, {} latent channels, {}-prediction",
                c.family.name(),
                c.unet.block_out_channels,
                c.unet.context_dim,
                c.vae.latent_channels,
                pred
            ) + if c.unet.in_channels != c.vae.latent_channels {
                " (inpainting model)"
            } else {
                ""
            } + if cpu_bf16 { " (bf16 weights, f32 compute on CPU)" } else { "" }
                + &format!(", weights {:.2} GB in memory", self.base.resident_bytes() as f64 / 1e9)
                + &self
                    .base
                    .metadata
                    .get("latent_studio.gguf_types")
                    .map(|q| format!(", GGUF {q}"))
                    .unwrap_or_default(),
            dtype: self.dtype,
            device: match self.device.location() {
                candle_core::DeviceLocation::Cpu => "cpu".to_string(),
                candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
                candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
            },
            default_size: c.default_size,
            default_guidance: c.default_guidance,
        }
    }

    /// Replaces the merged LoRA set (empty: back to the checkpoint's own weights). Every merge
    /// starts from the kept originals, so strengths can change any number of times without
    /// drift or disk access. On error the model is left exactly as it was.
    pub fn apply_loras(&mut self, loras: &[(&crate::lora::LoraFile, f32, f32)]) -> Result<Vec<crate::lora::LoraReport>> {
        if self.lora_table.is_none() {
            let cfg = &self.config.unet;
            let up_attn: Vec<bool> = cfg.up_attention.iter().map(Option::is_some).collect();
            let lpb = cfg.layers_per_block;
            let base = &self.base;
            let names = base
                .tensors
                .keys()
                .chain(base.quantized.keys())
                .filter(|k| k.ends_with(".weight"))
                .map(|k| {
                    let ldm = k
                        .strip_prefix("unet.")
                        .and_then(|p| p.strip_suffix(".weight"))
                        .and_then(|p| crate::checkpoint::convert::unet_module_to_ldm(p, lpb, &up_attn));
                    (k.as_str(), ldm)
                });
            self.lora_table = Some(crate::lora::keys::table(names));
        }
        let table = self
            .lora_table
            .as_ref()
            .ok_or_else(|| EngineError::Other("LoRA table missing".into()))?;
        let (replacements, reports) = if loras.is_empty() {
            (Default::default(), vec![])
        } else {
            crate::lora::merge_into(&self.base, table, loras)?
        };
        let mut merged = self.base.clone();
        for (k, t) in replacements {
            merged.quantized.remove(&k);
            merged.tensors.insert(k, t);
        }
        let text = self
            .config
            .text
            .iter()
            .map(|t| ClipText::new(&merged, t))
            .collect::<Result<Vec<_>>>()?;
        let unet = Unet::new(&merged, &self.config.unet)?;
        self.text = text;
        self.unet = unet;
        self.lora_hashes = loras.iter().map(|(f, u, _)| (f.name.clone(), f.hash.clone(), *u)).collect();
        Ok(reports)
    }

    /// The UNet (for tests and benchmarks).
    pub fn unet(&self) -> &Unet {
        &self.unet
    }

    /// The latent-to-RGB map of the live previews (fitted ones from the metadata, or the
    /// family's).
    pub fn preview_coefficients(&self) -> &LatentRgb {
        &self.preview
    }

    /// The VAE decoder (for tests and benchmarks).
    pub fn vae(&self) -> &VaeDecoder {
        &self.vae
    }

    /// The device the networks live on.
    pub fn device(&self) -> &Device {
        &self.device
    }
}

impl Pipeline {
    /// Final latents (`[1, c, h, w]`, unscaled) -> checked values and the decoded image:
    /// the one VAE path every task ends with.
    /// Reads a tiny decoder (TAESD family) for this model's latents.
    pub fn load_tiny(&self, path: &Path) -> Result<crate::nets::taesd::TinyDecoder> {
        let w = checkpoint::load_tiny_decoder(path, CDType::F32, &self.device)?;
        let t = crate::nets::taesd::TinyDecoder::new(&w)?;
        if t.latent_channels != self.config.vae.latent_channels {
            return Err(EngineError::InvalidRequest(format!(
                "tiny decoder {} takes {} latent channels, the model has {}: it is for another family",
                path.display(),
                t.latent_channels,
                self.config.vae.latent_channels
            )));
        }
        Ok(t)
    }

    /// The preview of a clean estimate `x0` (UNet latents): the tiny decoder's image when
    /// one is loaded, else the latent projection at latent resolution.
    pub fn preview_image(&self, x0: &Tensor) -> Result<ImageRgb8> {
        match &self.tiny {
            Some(t) => to_image(&t.decode(&x0.narrow(0, 0, 1)?.to_dtype(CDType::F32)?)?),
            None => self.preview.project(x0),
        }
    }

    /// Decodes UNet-space latents `[1, c, h, w]` (what `--latents-out` writes) with the VAE,
    /// or with the tiny decoder when `tiny` is set and one is loaded.
    pub fn decode_latents(&self, latents: &Tensor, tiny: bool) -> Result<ImageRgb8> {
        let latents = latents.to_device(&self.device)?.to_dtype(CDType::F32)?;
        let (_, c, _, _) = latents.dims4()?;
        if c != self.config.vae.latent_channels {
            return Err(EngineError::InvalidRequest(format!(
                "the latents have {c} channels, this model's VAE takes {}",
                self.config.vae.latent_channels
            )));
        }
        match (&self.tiny, tiny) {
            (Some(t), true) => to_image(&t.decode(&latents)?),
            (None, true) => Err(EngineError::InvalidRequest("no tiny decoder is loaded".into())),
            _ => Ok(self.decode(&latents)?.1),
        }
    }

    fn decode(&self, latents: &Tensor) -> Result<(Vec<f32>, ImageRgb8)> {
        let flat: Vec<f32> = latents.flatten_all()?.to_vec1()?;
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(EngineError::NonFinite("latents after denoising"));
        }
        let decoded = self
            .vae
            .decode_with(&(latents / self.config.vae.scaling_factor)?, self.vae_tiling, decode_budget())?;
        Ok((flat, to_image(&decoded)?))
    }
}

/// `[1, 3, h, w]` in [-1, 1] -> 8-bit RGB.
fn to_image(decoded: &Tensor) -> Result<ImageRgb8> {
    let (_, _, h, w) = decoded.dims4()?;
    let data: Vec<f32> = decoded.get(0)?.flatten_all()?.to_vec1()?;
    if data.iter().any(|v| !v.is_finite()) {
        return Err(EngineError::NonFinite("decoded image"));
    }
    let plane = h * w;
    let mut pixels = Vec::with_capacity(plane * 3);
    for p in 0..plane {
        for ch in 0..3 {
            pixels.push(to_u8(data[ch * plane + p] / 2.0 + 0.5));
        }
    }
    Ok(ImageRgb8 {
        width: w as u32,
        height: h as u32,
        pixels,
    })
}

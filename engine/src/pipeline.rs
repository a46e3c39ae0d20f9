//! The text-to-image pipeline: prompt -> text embeddings -> denoising loop -> VAE -> pixels.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::{DType as CDType, Device, Tensor};

use crate::error::{EngineError, Result};
use crate::metadata::Parameters;
use crate::model::checkpoint::{self, Weights};
use crate::model::clip::{ClipText, TextRequest};
use crate::model::config::{self, Family, ModelConfig};
use crate::model::unet::Unet;
use crate::model::vae::{VaeDecoder, VaeTiling};
use crate::preview::{LatentRgb, to_u8};
use crate::protocol::{DType, DeviceKind, GenerateRequest, ImageRgb8, LatentsOut, ModelInfo, ModelSpec, Prediction, Timings};
use crate::rng::TorchRng;
use crate::sampling::denoiser;
use crate::sampling::schedule::{ModelSchedule, ScheduleKind};
use crate::sampling::{self, SolverInfo, SolverParams};
use crate::tokenizer::ClipTokenizer;

mod guided;
use guided::Guided;

/// The longest feature-cache interval a request may ask for (DeepCache uses 2-10).
pub const MAX_FEATURE_CACHE: u32 = 20;

/// The highest token merging ratio a request may ask for (A1111 allows up to 0.9).
pub const MAX_TOKEN_MERGE: f64 = 0.9;

/// Opens the candle device for `kind`, with a clear error where this build lacks it.
pub fn open_device(kind: DeviceKind) -> Result<Device> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda(i) => Device::new_cuda(i).map_err(|e| EngineError::DeviceUnavailable(format!("cuda:{i} ({e})"))),
        DeviceKind::Metal(i) => Device::new_metal(i).map_err(|e| EngineError::DeviceUnavailable(format!("metal:{i} ({e})"))),
    }
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
    let cfg = config::infer(&w, name)?;
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

/// A request checked against the loaded model.
#[derive(Clone, Debug)]
pub struct Job {
    pub request: GenerateRequest,
    pub solver: &'static SolverInfo,
    pub schedule: ScheduleKind,
    pub params: SolverParams,
    pub latent_size: (usize, usize),
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

/// Text conditioning for a batch of (uncond, cond) or (cond).
struct Conditioning {
    context: Tensor,
    pooled: Option<Tensor>,
}

/// A loaded model ready to generate.
pub struct Pipeline {
    pub config: ModelConfig,
    pub name: String,
    pub path: PathBuf,
    pub report: LoadReport,
    pub hash: Option<String>,
    text: Vec<ClipText>,
    unet: Unet,
    vae: VaeDecoder,
    /// The checkpoint's own weights (W0), kept so LoRA changes always start from them; they
    /// share storage with the networks, so keeping them costs nothing until a LoRA is merged.
    base: Weights,
    lora_table: Option<std::collections::HashMap<String, String>>,
    /// Short hashes of the LoRA files merged now, for the metadata.
    lora_hashes: Vec<(String, String)>,
    device: Device,
    dtype: DType,
    schedule: ModelSchedule,
    preview: LatentRgb,
    /// Whether the VAE decodes big images in tiles (default: when memory would not fit).
    pub vae_tiling: VaeTiling,
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

/// A1111's short model hash: the first 10 hex digits of the file's SHA-256.
fn file_hash(path: &Path) -> Option<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let d = h.finalize();
    Some(d.iter().take(5).map(|b| format!("{b:02x}")).collect())
}

impl Pipeline {
    /// Loads a checkpoint (single file or diffusers folder) and builds the networks.
    pub fn load(spec: &ModelSpec) -> Result<Self> {
        let device = open_device(spec.device)?;
        let w = checkpoint::load(&spec.path, candle_dtype(spec.dtype), &device)?;
        let name = spec
            .path
            .file_stem()
            .and_then(|n| n.to_str())
            .map(|s| s.to_string())
            .unwrap_or_else(|| "model".into());
        let mut cfg = config::infer(&w, &name)?;
        if let Some(p) = spec.prediction {
            cfg.prediction = p;
        }
        let hash = if spec.path.is_file() { file_hash(&spec.path) } else { None };
        let mut pipe = Self::from_weights(w, cfg, &name, spec.dtype, device)?;
        pipe.path = spec.path.clone();
        pipe.hash = hash;
        pipe.vae_tiling = spec.vae_tiling;
        Ok(pipe)
    }

    /// Builds the networks from weights already in memory (checkpoints, synthetic models).
    pub fn from_weights(mut w: Weights, cfg: ModelConfig, name: &str, dtype: DType, device: Device) -> Result<Self> {
        if dtype == DType::BF16 && device.is_cpu() {
            // candle 0.11 has no bf16 matrix multiply on CPU: keep bf16's rounding of the
            // weights but compute in f32.
            for t in w.tensors.values_mut() {
                *t = t.to_dtype(CDType::F32)?;
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
        })
    }

    /// The checkpoint's own weights (what LoRA merges start from).
    pub fn base_weights(&self) -> &Weights {
        &self.base
    }

    /// Summary for the window and the CLI.
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
            ) + if cpu_bf16 { " (bf16 weights, f32 compute on CPU)" } else { "" },
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

    /// Checks a request against this model and turns it into a job; nothing runs yet.
    pub fn validate(&self, request: &GenerateRequest) -> Result<Job> {
        let r = request;
        let scale = self.config.vae.scale() as u32;
        let bad = |m: String| Err(EngineError::InvalidRequest(m));
        if r.width == 0 || r.height == 0 || !r.width.is_multiple_of(8) || !r.height.is_multiple_of(8) {
            return bad(format!("size {}x{} must be positive multiples of 8", r.width, r.height));
        }
        if !r.width.is_multiple_of(scale) || !r.height.is_multiple_of(scale) {
            return bad(format!(
                "size {}x{} must be a multiple of this model's {scale}-pixel latent grid",
                r.width, r.height
            ));
        }
        if r.width > 8192 || r.height > 8192 || (r.width as u64 * r.height as u64) > 4096 * 4096 {
            return bad(format!(
                "size {}x{} is too large (at most 4096x4096 pixels in total)",
                r.width, r.height
            ));
        }
        if r.width / scale < 8 || r.height / scale < 8 {
            return bad(format!(
                "size {}x{} is too small for this model (at least {} pixels per side)",
                r.width,
                r.height,
                8 * scale
            ));
        }
        if r.steps == 0 || r.steps > 1000 {
            return bad(format!("steps must be between 1 and 1000, got {}", r.steps));
        }
        if !r.cfg_scale.is_finite() || r.cfg_scale < 0.0 || r.cfg_scale > 100.0 {
            return bad(format!("CFG scale must be a number between 0 and 100, got {}", r.cfg_scale));
        }
        if r.clip_skip == 0 || r.clip_skip as usize > self.config.text[0].layers {
            return bad(format!(
                "clip skip must be between 1 and {}, got {}",
                self.config.text[0].layers, r.clip_skip
            ));
        }
        let solver = sampling::solver_info(&r.solver)?;
        let schedule = ScheduleKind::parse(&r.schedule).ok_or_else(|| {
            let names: Vec<&str> = sampling::schedule::SCHEDULES.iter().map(|(n, _)| *n).collect();
            EngineError::InvalidRequest(format!("unknown schedule '{}' (known: {})", r.schedule, names.join(", ")))
        })?;
        let mut params = sampling::default_params(solver);
        if let Some(eta) = r.eta {
            if !eta.is_finite() || !(0.0..=10.0).contains(&eta) {
                return bad(format!("eta must be between 0 and 10, got {eta}"));
            }
            params.eta = eta;
        }
        if !r.cfg_rescale.is_finite() || !(0.0..=1.0).contains(&r.cfg_rescale) {
            return bad(format!("CFG rescale must be between 0 and 1, got {}", r.cfg_rescale));
        }
        if !r.cfg_until.is_finite() || !(0.0..=1.0).contains(&r.cfg_until) {
            return bad(format!("CFG until must be a fraction between 0 and 1, got {}", r.cfg_until));
        }
        if !(1..=MAX_FEATURE_CACHE).contains(&r.feature_cache) {
            return bad(format!(
                "the feature cache interval must be between 1 (off) and {MAX_FEATURE_CACHE}, got {}",
                r.feature_cache
            ));
        }
        if !r.token_merge.is_finite() || !(0.0..=MAX_TOKEN_MERGE).contains(&r.token_merge) {
            return bad(format!(
                "the token merging ratio must be between 0 (off) and {MAX_TOKEN_MERGE}, got {}",
                r.token_merge
            ));
        }
        if r.feature_cache > 1 && !self.unet.caches_deep_features() {
            return bad("this model's UNet has a single level: the feature cache does not apply".into());
        }
        Ok(Job {
            request: r.clone(),
            solver,
            schedule,
            params,
            latent_size: ((r.height / scale) as usize, (r.width / scale) as usize),
        })
    }

    /// Network evaluations a job will spend (CFG's double pass counted).
    pub fn nfe(&self, job: &Job) -> u32 {
        planned_nfe(job)
    }

    /// Text conditioning as the UNet receives it: `[uncond, cond]` contexts `[2, 77k, width]`
    /// (or `[cond]` alone without guidance) and, for SDXL, the pooled embeddings.
    pub fn encode_prompt(&self, prompt: &str, negative: &str, clip_skip: u32, with_uncond: bool) -> Result<(Tensor, Option<Tensor>)> {
        let c = self.encode(prompt, negative, clip_skip, with_uncond)?;
        Ok((c.context, c.pooled))
    }

    /// Replaces the merged LoRA set (empty: back to the checkpoint's own weights). Every merge
    /// starts from the kept originals, so strengths can change any number of times without
    /// drift or disk access. On error the model is left exactly as it was.
    pub fn apply_loras(&mut self, loras: &[(&crate::lora::LoraFile, f32, f32)]) -> Result<Vec<crate::lora::LoraReport>> {
        if self.lora_table.is_none() {
            let cfg = &self.config.unet;
            let up_attn: Vec<bool> = cfg.up_attention.iter().map(Option::is_some).collect();
            let lpb = cfg.layers_per_block;
            let names = self.base.tensors.keys().filter(|k| k.ends_with(".weight")).map(|k| {
                let ldm = k
                    .strip_prefix("unet.")
                    .and_then(|p| p.strip_suffix(".weight"))
                    .and_then(|p| crate::model::convert::unet_module_to_ldm(p, lpb, &up_attn));
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
            crate::lora::merge_into(&self.base.tensors, table, loras)?
        };
        let mut merged = self.base.clone();
        for (k, t) in replacements {
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
        self.lora_hashes = loras.iter().map(|(f, _, _)| (f.name.clone(), f.hash.clone())).collect();
        Ok(reports)
    }

    /// The UNet (for tests and benchmarks).
    pub fn unet(&self) -> &Unet {
        &self.unet
    }

    /// The VAE decoder (for tests and benchmarks).
    /// The latent-to-RGB map of the live previews (fitted ones from the metadata, or the
    /// family's).
    pub fn preview_coefficients(&self) -> &LatentRgb {
        &self.preview
    }

    pub fn vae(&self) -> &VaeDecoder {
        &self.vae
    }

    /// The device the networks live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    fn encode(&self, prompt: &str, negative: &str, clip_skip: u32, with_uncond: bool) -> Result<Conditioning> {
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

    /// Runs one job to the end (or to cancellation / failure).
    pub fn generate(&self, job: &Job, hooks: &mut dyn Hooks) -> Result<Output> {
        let t0 = Instant::now();
        let r = &job.request;
        let guided = uses_cfg(r.cfg_scale);
        let cond = self.encode(&r.prompt, &r.negative, r.clip_skip, guided)?;
        // On a GPU the work is queued: each stage's time ends when the device has done it.
        self.device.synchronize()?;
        let t_text = t0.elapsed();

        let steps = r.steps as usize;
        let run = sampling::run_schedule(job.solver, job.schedule, &self.schedule, steps, self.config.family == Family::Sdxl);
        let (h, w) = job.latent_size;
        let c = self.config.unet.in_channels;
        let mut rng = TorchRng::new(r.seed);
        let noise = rng.randn_f32(c * h * w);
        let noise = Tensor::from_vec(noise, (1, c, h, w), &self.device)?;
        let x = (noise * run.init_noise_sigma)?;

        let added = match self.config.unet.addition {
            Some(_) => {
                let (hh, ww) = (r.height as f32, r.width as f32);
                let row = [hh, ww, 0.0, 0.0, hh, ww];
                let b = if guided { 2 } else { 1 };
                let ids: Vec<f32> = (0..b).flat_map(|_| row).collect();
                Some(Tensor::from_vec(ids, (b, 6), &self.device)?)
            }
            None => None,
        };
        let solver = sampling::solver_fn(job.solver.name)?;
        let t_loop = Instant::now();
        let mut den = Guided {
            pipe: self,
            cond: &cond,
            added: added.as_ref(),
            run: &run,
            scale: r.cfg_scale,
            rescale: r.cfg_rescale,
            guided_steps: guided_steps(r),
            guided,
            hooks,
            nfe: 0,
            step: 0,
            total: r.steps,
            last_step: Instant::now(),
            preview_time: Duration::ZERO,
            cache_every: r.feature_cache,
            cache: None,
            refreshed_at: None,
            shallow_nfe: 0,
            token_merge: r.token_merge,
        };
        let x = solver(&mut den, x, &run.sigmas, &job.params, &mut rng)?;
        let (nfe, shallow_nfe, preview_time) = (den.nfe, den.shallow_nfe, den.preview_time);
        let sigma_last = run.sigmas.last().copied().unwrap_or(0.0);
        let latents = (x * denoiser::c_in(sigma_last))?;
        let t_denoise = t_loop.elapsed().saturating_sub(preview_time);

        let t_vae0 = Instant::now();
        let flat: Vec<f32> = latents.flatten_all()?.to_vec1()?;
        if flat.iter().any(|v| !v.is_finite()) {
            return Err(EngineError::NonFinite("latents after denoising"));
        }
        let decoded = self
            .vae
            .decode_with(&(&latents / self.config.vae.scaling_factor)?, self.vae_tiling, decode_budget())?;
        let image = to_image(&decoded)?;
        let t_vae = t_vae0.elapsed();

        let timings = Timings {
            text: t_text,
            denoise: t_denoise,
            vae: t_vae,
            previews: preview_time,
            total: t0.elapsed(),
            nfe,
            shallow_nfe,
        };
        Ok(Output {
            image,
            latents: LatentsOut {
                shape: latents.dims().to_vec(),
                data: flat,
            },
            metadata: self.parameters(job, nfe).to_text(),
            timings,
        })
    }

    /// The A1111 `parameters` of a job on this model.
    pub fn parameters(&self, job: &Job, nfe: u32) -> Parameters {
        let r = &job.request;
        let mut p = Parameters {
            prompt: r.prompt.clone(),
            negative: r.negative.clone(),
            pairs: vec![],
        };
        p.push("Steps", r.steps)
            .push("Sampler", job.solver.a1111)
            .push("Schedule type", job.schedule.a1111())
            .push("CFG scale", r.cfg_scale)
            .push("Seed", r.seed)
            .push("Size", format!("{}x{}", r.width, r.height));
        if let Some(h) = &self.hash {
            p.push("Model hash", h);
        }
        p.push("Model", &self.name);
        if r.clip_skip > 1 {
            p.push("Clip skip", r.clip_skip);
        }
        if !self.lora_hashes.is_empty() {
            let list: Vec<String> = self.lora_hashes.iter().map(|(n, h)| format!("{n}: {h}")).collect();
            p.push("Lora hashes", list.join(", "));
        }
        if r.cfg_rescale > 0.0 {
            p.push("CFG rescale", r.cfg_rescale);
        }
        if r.cfg_until < 1.0 {
            p.push("CFG until", r.cfg_until);
        }
        if r.feature_cache > 1 {
            p.push("Feature cache", r.feature_cache);
        }
        if r.token_merge > 0.0 {
            p.push("Token merging ratio", r.token_merge);
        }
        if job.params.eta != job.solver.default_eta {
            p.push("Eta", job.params.eta);
        }
        p.push("Solver", job.solver.name).push("Schedule", &r.schedule);
        p.push("NFE", nfe)
            .push("Version", format!("Latent Studio {}", env!("CARGO_PKG_VERSION")));
        p
    }
}

fn uses_cfg(scale: f64) -> bool {
    (scale - 1.0).abs() > 1e-9
}

/// Steps (counted from 0) that still run the unconditional pass: `ceil(cfg_until * steps)`.
fn guided_steps(r: &GenerateRequest) -> u32 {
    if !uses_cfg(r.cfg_scale) {
        0
    } else {
        (r.cfg_until * r.steps as f64).ceil() as u32
    }
}

/// Network evaluations a job will spend, CFG's passes and truncation included.
pub fn planned_nfe(job: &Job) -> u32 {
    nfe_of(job.solver, &job.request)
}

/// The NFE a request will spend, known before any model is loaded (the window shows it
/// beside the sliders); `None` for an unknown solver.
pub fn request_nfe(request: &GenerateRequest) -> Option<u32> {
    let solver = sampling::SOLVERS.iter().find(|s| s.name == request.solver)?;
    Some(nfe_of(solver, request))
}

/// Of [`request_nfe`], the evaluations that run the whole UNet: all of them without the
/// feature cache; with it, the first evaluation of every `feature_cache`-th step.
pub fn request_whole_nfe(request: &GenerateRequest) -> Option<u32> {
    let solver = sampling::SOLVERS.iter().find(|s| s.name == request.solver)?;
    if request.feature_cache <= 1 {
        return Some(nfe_of(solver, request));
    }
    let guided = guided_steps(request);
    Some(
        (0..request.steps)
            .filter(|k| k.is_multiple_of(request.feature_cache))
            .map(|k| if k < guided { 2 } else { 1 })
            .sum(),
    )
}

fn nfe_of(solver: &sampling::SolverInfo, request: &GenerateRequest) -> u32 {
    let guided = guided_steps(request);
    (0..request.steps)
        .map(|k| {
            let evals = sampling::evaluations(solver, k + 1) - sampling::evaluations(solver, k);
            evals * if k < guided { 2 } else { 1 }
        })
        .sum()
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

//! A request checked against the loaded model, what it will cost (NFE, CFG's double pass and
//! truncation counted, the feature cache's whole/shallow split), and the A1111 parameters it
//! is written with.

use crate::error::{EngineError, Result};
use crate::metadata::Parameters;
use crate::protocol::{GenerateRequest, InpaintArea, MaskedContent};
use crate::sampling::schedule::ScheduleKind;
use crate::sampling::{self, SolverInfo, SolverParams};

use super::Pipeline;

/// The longest feature-cache interval a request may ask for (DeepCache uses 2-10).
pub const MAX_FEATURE_CACHE: u32 = 20;

/// The highest token merging ratio a request may ask for (A1111 allows up to 0.9).
pub const MAX_TOKEN_MERGE: f64 = 0.9;

/// A request checked against the loaded model.
#[derive(Clone, Debug)]
pub struct Job {
    pub request: GenerateRequest,
    pub solver: &'static SolverInfo,
    pub schedule: ScheduleKind,
    pub params: SolverParams,
    pub latent_size: (usize, usize),
}

impl Pipeline {
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
        if let Some(hz) = &r.hires {
            if r.init_image.is_some() {
                return bad("the hires fix runs after text to image; it does not take an init image".into());
            }
            if !hz.scale.is_finite() || !(1.0..=4.0).contains(&hz.scale) || hz.scale == 1.0 {
                return bad(format!("the hires upscale must be above 1 and at most 4, got {}", hz.scale));
            }
            if !hz.strength.is_finite() || !(0.0..=1.0).contains(&hz.strength) {
                return bad(format!("the hires denoising strength must be between 0 and 1, got {}", hz.strength));
            }
            if hz.steps > 1000 {
                return bad(format!("hires steps must be at most 1000, got {}", hz.steps));
            }
            let (w2, h2) = hires_size(r, scale);
            if (w2 as u64) * (h2 as u64) > 4096 * 4096 {
                return bad(format!("the hires size {w2}x{h2} is too large (at most 4096x4096 pixels in total)"));
            }
            if hires_run_steps(r) == 0 {
                return bad(format!("hires strength {} runs no step; raise it or the hires steps", hz.strength));
            }
            if hz.upscaler == crate::protocol::HiresUpscaler::Model {
                match &hz.model {
                    None => return bad("the hires upscaler model needs its file (an ESRGAN-family .safetensors)".into()),
                    Some(m) if !m.is_file() => {
                        return bad(format!(
                            "the hires upscaler model {} is not a file (put ESRGAN-family .safetensors files in models/ESRGAN)",
                            m.display()
                        ));
                    }
                    Some(_) => {}
                }
            }
        }
        if r.mask.is_some() && r.init_image.is_none() {
            return bad("a mask needs an init image to paint into".into());
        }
        let masked_area = r.mask.is_some() && r.inpaint_area == InpaintArea::Masked;
        if let Some(img) = &r.init_image {
            if masked_area {
                // "Only masked" takes the picture at its own size (the crop is resized).
                if img.width < 8 || img.height < 8 || u64::from(img.width) * u64::from(img.height) > 8192 * 8192 {
                    return bad(format!(
                        "the init image is {}x{}: only masked inpainting takes pictures from 8x8 to 8192x8192 pixels",
                        img.width, img.height
                    ));
                }
                if r.masked_padding > 4096 {
                    return bad(format!(
                        "the masked area padding must be at most 4096 pixels, got {}",
                        r.masked_padding
                    ));
                }
            } else if (img.width, img.height) != (r.width, r.height) {
                return bad(format!(
                    "the init image is {}x{}, the request {}x{}: resize it to the request's size first",
                    img.width, img.height, r.width, r.height
                ));
            }
            if img.pixels.len() != (img.width * img.height * 3) as usize {
                return bad("the init image is damaged (its pixels do not fill its size)".into());
            }
            if !r.strength.is_finite() || !(0.0..=1.0).contains(&r.strength) {
                return bad(format!("the denoising strength must be between 0 and 1, got {}", r.strength));
            }
            if let Some(m) = &r.mask {
                if (m.width, m.height) != (img.width, img.height) || m.pixels.len() != (m.width * m.height * 3) as usize {
                    return bad(format!(
                        "the mask is {}x{}, the init image {}x{}: they must be the same size",
                        m.width, m.height, img.width, img.height
                    ));
                }
                if !super::masked_area::mask_bits(m).iter().any(|&b| b) {
                    return bad("the mask is empty: paint (white) where the picture should change".into());
                }
            }
            if r.mask_blur > 64 {
                return bad(format!("the mask blur must be at most 64 pixels, got {}", r.mask_blur));
            }
            if run_steps(r) == 0 {
                return bad(format!(
                    "denoising strength {} with {} steps runs no step; raise the strength or the steps",
                    r.strength, r.steps
                ));
            }
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
        if let Some(q) = self.base.metadata.get("latent_studio.gguf_types") {
            // GGUF weights: their types by share of parameters ("q8_0 73%, f16 27%").
            p.push("Model quantization", q.replace(',', ";"));
        }
        if let Some((name, hash)) = &self.vae_override {
            if let Some(h) = hash {
                p.push("VAE hash", h);
            }
            p.push("VAE", name);
        }
        if let Some((name, hash)) = &self.components {
            // A UNet-only file's text encoders / VAE came from this checkpoint.
            if let Some(h) = hash {
                p.push("Components hash", h);
            }
            p.push("Components", name);
        }
        if r.init_image.is_some() {
            p.push("Denoising strength", crate::metadata::short_number(r.strength));
        }
        if r.mask.is_some() {
            p.push("Mask blur", r.mask_blur);
            if r.masked_content != MaskedContent::Original {
                p.push("Masked content", r.masked_content.name());
            }
            if r.inpaint_area == InpaintArea::Masked {
                p.push("Inpaint area", r.inpaint_area.name());
                p.push("Masked area padding", r.masked_padding);
            }
        }
        if let Some(h) = &r.hires {
            p.push("Denoising strength", crate::metadata::short_number(h.strength));
            p.push("Hires upscale", crate::metadata::short_number(h.scale));
            if h.steps > 0 {
                p.push("Hires steps", h.steps);
            }
            p.push("Hires upscaler", h.upscaler_name());
        }
        if r.clip_skip > 1 {
            p.push("Clip skip", r.clip_skip);
        }
        if !self.lora_hashes.is_empty() {
            let list: Vec<String> = self.lora_hashes.iter().map(|(n, h, _)| format!("{n}: {h}")).collect();
            p.push("Lora hashes", list.join(", "));
            // Ours: the strengths, so a restore reproduces LoRAs set in the panel (A1111 keeps
            // them only in prompt tags).
            let list: Vec<String> = self
                .lora_hashes
                .iter()
                .map(|(n, _, w)| format!("{n}: {}", crate::metadata::short_number(f64::from(*w))))
                .collect();
            p.push("Lora weights", list.join(", "));
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
        if r.emphasis != crate::protocol::Emphasis::Original {
            p.push("Emphasis", r.emphasis.name());
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

pub(super) fn uses_cfg(scale: f64) -> bool {
    (scale - 1.0).abs() > 1e-9
}

/// Steps (counted from 0) that still run the unconditional pass: `ceil(cfg_until * steps)`.
/// Steps a request runs: all of them for text to image; for image to image diffusers'
/// `min(int(steps * strength), steps)`, the last ones of the schedule.
pub fn run_steps(r: &GenerateRequest) -> u32 {
    match r.init_image {
        None => r.steps,
        Some(_) => ((r.steps as f64 * r.strength) as u32).min(r.steps),
    }
}

pub(super) fn guided_steps(r: &GenerateRequest) -> u32 {
    if !uses_cfg(r.cfg_scale) {
        0
    } else {
        (r.cfg_until * run_steps(r) as f64).ceil() as u32
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

/// The most steps `request`'s solver can take within `budget` network evaluations, with its
/// guidance (CFG's second pass, truncation) and hires pass counted: the NFE-budget setting
/// and the solver lab's equal-cost cells. `None` when even one step costs more (a budget of
/// 1 with CFG) or the solver is unknown. The NFE it will spend is
/// `request_nfe(&GenerateRequest { steps, ..request })`: the budget itself where the
/// solver's step cost divides it, else the nearest below.
pub fn steps_for_budget(request: &GenerateRequest, budget: u32) -> Option<u32> {
    let cost = |steps: u32| {
        request_nfe(&GenerateRequest {
            steps,
            init_image: None,
            mask: None,
            ..request.clone()
        })
    };
    if cost(1)? > budget {
        return None;
    }
    // The cost grows with the steps: the largest affordable count, by bisection.
    let (mut lo, mut hi) = (1u32, budget.max(1));
    while lo < hi {
        let mid = lo + (hi - lo).div_ceil(2);
        if cost(mid)? <= budget {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    Some(lo)
}

/// Of [`request_nfe`], the evaluations that run the whole UNet: all of them without the
/// feature cache; with it, the first evaluation of every `feature_cache`-th step.
pub fn request_whole_nfe(request: &GenerateRequest) -> Option<u32> {
    let solver = sampling::SOLVERS.iter().find(|s| s.name == request.solver)?;
    if request.feature_cache <= 1 {
        return Some(nfe_of(solver, request));
    }
    let whole = |r: &GenerateRequest| -> u32 {
        let guided = guided_steps(r);
        (0..run_steps(r))
            .filter(|k| k.is_multiple_of(r.feature_cache))
            .map(|k| if k < guided { 2 } else { 1 })
            .sum()
    };
    Some(whole(request) + hires_request(request).map_or(0, |h| whole(&h)))
}

fn nfe_of(solver: &sampling::SolverInfo, request: &GenerateRequest) -> u32 {
    let pass = |steps: u32, guided: u32| -> u32 {
        (0..steps)
            .map(|k| {
                let evals = sampling::evaluations(solver, k + 1) - sampling::evaluations(solver, k);
                evals * if k < guided { 2 } else { 1 }
            })
            .sum()
    };
    let first = pass(run_steps(request), guided_steps(request));
    match hires_request(request) {
        Some(h) => first + pass(h.steps, guided_steps(&h)),
        None => first,
    }
}

/// The hires fix's pixel size: the request's times the scale, down to the latent grid.
pub fn hires_size(r: &GenerateRequest, grid: u32) -> (u32, u32) {
    let s = r.hires.as_ref().map_or(1.0, |h| h.scale);
    let f = |v: u32| (((v as f64 * s) as u32) / grid * grid).max(grid);
    (f(r.width), f(r.height))
}

/// Steps the hires pass runs: `int(steps * strength)` of its schedule.
pub fn hires_run_steps(r: &GenerateRequest) -> u32 {
    r.hires.as_ref().map_or(0, |h| {
        let total = if h.steps == 0 { r.steps } else { h.steps };
        ((total as f64 * h.strength) as u32).min(total)
    })
}

/// The hires pass as a request of its own (its size, the steps it runs, no hires), for the
/// cost accounting and the sampling loop.
pub fn hires_request(r: &GenerateRequest) -> Option<GenerateRequest> {
    r.hires.as_ref()?;
    let (width, height) = hires_size(r, 8);
    Some(GenerateRequest {
        width,
        height,
        steps: hires_run_steps(r),
        init_image: None,
        mask: None,
        hires: None,
        ..r.clone()
    })
}

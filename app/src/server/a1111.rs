//! AUTOMATIC1111's `/sdapi/v1` JSON: the txt2img and img2img request bodies with A1111's
//! field names and defaults, turned into checked [`GenerateRequest`]s, and the `info` text of
//! a response.

use std::sync::Arc;

use latent_engine::protocol::{GenerateRequest, Hires, HiresUpscaler, ImageRgb8, InpaintArea, MaskedContent};
use serde::Deserialize;
use serde_json::{Value, json};

/// One field that is wrong: where and why (FastAPI's 422 `detail` entries, as A1111 sends).
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub msg: String,
}

impl FieldError {
    pub fn new(field: &str, msg: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            msg: msg.into(),
        }
    }
}

/// The largest image a request may ask for (pixels per side) and batch it may make.
pub const MAX_SIDE: u32 = 4096;
pub const MAX_STEPS: u32 = 1000;
pub const MAX_IMAGES: u32 = 64;

fn d_seed() -> i64 {
    -1
}
fn d_one() -> u32 {
    1
}
fn d_steps() -> u32 {
    50
}
fn d_cfg() -> f64 {
    7.0
}
fn d_side() -> u32 {
    512
}
fn d_sampler() -> String {
    "Euler".into()
}
fn d_hr_scale() -> f64 {
    2.0
}
fn d_strength() -> f64 {
    0.75
}
fn d_mask_blur() -> u32 {
    4
}
fn d_fill() -> u32 {
    1
}
fn d_padding() -> u32 {
    32
}
fn d_true() -> bool {
    true
}

/// The fields txt2img and img2img share (A1111's `StableDiffusionProcessing`).
#[derive(Debug, Clone, Deserialize)]
pub struct Common {
    #[serde(default)]
    pub prompt: String,
    #[serde(default)]
    pub negative_prompt: String,
    #[serde(default = "d_seed")]
    pub seed: i64,
    #[serde(default)]
    pub sampler_name: Option<String>,
    #[serde(default)]
    pub sampler_index: Option<String>,
    #[serde(default)]
    pub scheduler: Option<String>,
    #[serde(default = "d_one")]
    pub batch_size: u32,
    #[serde(default = "d_one")]
    pub n_iter: u32,
    #[serde(default = "d_steps")]
    pub steps: u32,
    #[serde(default = "d_cfg")]
    pub cfg_scale: f64,
    #[serde(default = "d_side")]
    pub width: u32,
    #[serde(default = "d_side")]
    pub height: u32,
    #[serde(default)]
    pub eta: Option<f64>,
    /// Settings for this request only (A1111: `CLIP_stop_at_last_layers`, ...).
    #[serde(default)]
    pub override_settings: serde_json::Map<String, Value>,
    #[serde(default = "d_true")]
    pub send_images: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Txt2Img {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub enable_hr: bool,
    #[serde(default = "d_hr_scale")]
    pub hr_scale: f64,
    #[serde(default)]
    pub hr_upscaler: Option<String>,
    #[serde(default)]
    pub hr_second_pass_steps: u32,
    /// The hires pass's strength.
    #[serde(default)]
    pub denoising_strength: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Img2Img {
    #[serde(flatten)]
    pub common: Common,
    #[serde(default)]
    pub init_images: Vec<String>,
    /// 0 just resize, 1 crop and resize, 2 resize and fill (3, latent upscale: as 0).
    #[serde(default)]
    pub resize_mode: u32,
    #[serde(default = "d_strength")]
    pub denoising_strength: f64,
    #[serde(default)]
    pub mask: Option<String>,
    #[serde(default = "d_mask_blur")]
    pub mask_blur: u32,
    /// 0 fill, 1 original, 2 latent noise, 3 latent nothing.
    #[serde(default = "d_fill")]
    pub inpainting_fill: u32,
    /// "Only masked".
    #[serde(default)]
    pub inpaint_full_res: bool,
    #[serde(default = "d_padding")]
    pub inpaint_full_res_padding: u32,
    /// 1: the mask's black is repainted.
    #[serde(default)]
    pub inpainting_mask_invert: u32,
}

/// Decodes a base64 picture (with or without a `data:image/...;base64,` prefix).
pub fn decode_image(field: &str, b64: &str) -> Result<ImageRgb8, FieldError> {
    crate::remote::wire::picture_b64(b64, u64::from(MAX_SIDE).pow(2)).map_err(|e| FieldError::new(field, e))
}

/// PNG bytes of an image with its `parameters` text, base64 (A1111's `images` entries).
pub fn encode_image(image: &ImageRgb8, parameters: &str) -> Result<String, String> {
    crate::remote::wire::png_b64(image, parameters)
}

/// What both kinds of request become: the first image's request (seeds count up from it)
/// and how many images.
pub struct Planned {
    pub request: GenerateRequest,
    pub images: u32,
    pub seed: u64,
}

impl Common {
    /// The checked base request; `default_clip_skip` is the server's option.
    fn plan(&self, default_clip_skip: u32, random_seed: u64) -> Result<Planned, Vec<FieldError>> {
        let mut errors = vec![];
        let mut check = |ok: bool, field: &str, msg: String| {
            if !ok {
                errors.push(FieldError::new(field, msg));
            }
        };
        for (field, v) in [("width", self.width), ("height", self.height)] {
            check(
                (8..=MAX_SIDE).contains(&v) && v % 8 == 0,
                field,
                format!("must be a multiple of 8 from 8 to {MAX_SIDE}, got {v}"),
            );
        }
        check(
            (1..=MAX_STEPS).contains(&self.steps),
            "steps",
            format!("must be 1 to {MAX_STEPS}, got {}", self.steps),
        );
        check(
            self.cfg_scale.is_finite() && (0.0..=100.0).contains(&self.cfg_scale),
            "cfg_scale",
            format!("must be 0 to 100, got {}", self.cfg_scale),
        );
        let images = u64::from(self.batch_size) * u64::from(self.n_iter);
        check(
            self.batch_size >= 1 && self.n_iter >= 1 && images <= u64::from(MAX_IMAGES),
            "batch_size",
            format!("batch_size x n_iter must be 1 to {MAX_IMAGES}, got {images}"),
        );
        let name = self.sampler_name.as_deref().or(self.sampler_index.as_deref()).unwrap_or("Euler");
        let (solver, schedule) = latent_engine::metadata::Parameters::a1111_sampler(name, self.scheduler.as_deref());
        let solver = solver.or_else(|| {
            latent_engine::sampling::SOLVERS
                .iter()
                .find(|s| s.name.eq_ignore_ascii_case(name.trim()))
                .map(|s| s.name)
        });
        check(
            solver.is_some(),
            "sampler_name",
            format!("unknown sampler {name:?} (GET /sdapi/v1/samplers lists them)"),
        );
        if let Some(s) = &self.scheduler {
            let known = schedule.is_some() || latent_engine::sampling::schedule::ScheduleKind::parse(&s.replace('_', "-")).is_some();
            check(
                known,
                "scheduler",
                format!("unknown scheduler {s:?} (GET /sdapi/v1/schedulers lists them)"),
            );
        }
        let clip_skip = match self.override_settings.get("CLIP_stop_at_last_layers") {
            Some(v) => match v.as_u64() {
                Some(n) if (1..=12).contains(&n) => n as u32,
                _ => {
                    errors.push(FieldError::new("override_settings", "CLIP_stop_at_last_layers must be 1 to 12"));
                    1
                }
            },
            None => default_clip_skip,
        };
        if let Some(e) = self.eta
            && !(e.is_finite() && (0.0..=1.0).contains(&e))
        {
            errors.push(FieldError::new("eta", format!("must be 0 to 1, got {e}")));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let seed = if self.seed < 0 { random_seed } else { self.seed as u64 };
        let schedule = schedule
            .or_else(|| self.scheduler.as_ref().map(|s| s.replace('_', "-").to_ascii_lowercase()))
            .unwrap_or_else(|| "default".into());
        Ok(Planned {
            request: GenerateRequest {
                prompt: self.prompt.clone(),
                negative: self.negative_prompt.clone(),
                width: self.width,
                height: self.height,
                steps: self.steps,
                cfg_scale: self.cfg_scale,
                seed,
                solver: solver.unwrap_or("euler").to_string(),
                schedule,
                eta: self.eta,
                clip_skip,
                preview_every: 1,
                ..GenerateRequest::default()
            },
            images: images as u32,
            seed,
        })
    }
}

impl Txt2Img {
    pub fn plan(&self, default_clip_skip: u32, random_seed: u64) -> Result<Planned, Vec<FieldError>> {
        let mut p = self.common.plan(default_clip_skip, random_seed)?;
        if self.enable_hr {
            let mut errors = vec![];
            let upscaler = match self.hr_upscaler.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
                None => HiresUpscaler::Latent,
                Some(n) => match HiresUpscaler::parse(n).filter(|u| *u != HiresUpscaler::Model) {
                    Some(u) => u,
                    None => {
                        errors.push(FieldError::new(
                            "hr_upscaler",
                            format!("unknown upscaler {n:?}: Latent, Latent (nearest), Latent (bicubic antialiased) or Lanczos"),
                        ));
                        HiresUpscaler::Latent
                    }
                },
            };
            let strength = self.denoising_strength.unwrap_or(0.7);
            if !(self.hr_scale.is_finite() && self.hr_scale > 1.0 && self.hr_scale <= 4.0) {
                errors.push(FieldError::new(
                    "hr_scale",
                    format!("must be above 1 and at most 4, got {}", self.hr_scale),
                ));
            }
            if !(strength.is_finite() && (0.0..=1.0).contains(&strength)) {
                errors.push(FieldError::new("denoising_strength", format!("must be 0 to 1, got {strength}")));
            }
            if !errors.is_empty() {
                return Err(errors);
            }
            p.request.hires = Some(Hires {
                scale: self.hr_scale,
                steps: self.hr_second_pass_steps,
                strength,
                upscaler,
                model: None,
            });
        }
        Ok(p)
    }
}

impl Img2Img {
    pub fn plan(&self, default_clip_skip: u32, random_seed: u64) -> Result<Planned, Vec<FieldError>> {
        let mut p = self.common.plan(default_clip_skip, random_seed)?;
        let mut errors = vec![];
        let Some(first) = self.init_images.first() else {
            return Err(vec![FieldError::new("init_images", "needs one picture (base64 PNG)")]);
        };
        let picture = decode_image("init_images", first).map_err(|e| vec![e])?;
        if !(self.denoising_strength.is_finite() && (0.0..=1.0).contains(&self.denoising_strength)) {
            errors.push(FieldError::new(
                "denoising_strength",
                format!("must be 0 to 1, got {}", self.denoising_strength),
            ));
        }
        if self.mask_blur > 64 {
            errors.push(FieldError::new("mask_blur", format!("must be 0 to 64, got {}", self.mask_blur)));
        }
        if self.inpainting_fill > 3 {
            errors.push(FieldError::new(
                "inpainting_fill",
                "must be 0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)",
            ));
        }
        let mode = match self.resize_mode {
            0 | 3 => crate::resize::ResizeMode::Just,
            1 => crate::resize::ResizeMode::Crop,
            2 => crate::resize::ResizeMode::Fill,
            m => {
                errors.push(FieldError::new("resize_mode", format!("must be 0 to 3, got {m}")));
                crate::resize::ResizeMode::Just
            }
        };
        let mask = match &self.mask {
            Some(m) if !m.trim().is_empty() => Some(decode_image("mask", m).map_err(|e| vec![e])?),
            _ => None,
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let r = &mut p.request;
        let rgb = |img: &ImageRgb8| image::RgbImage::from_raw(img.width, img.height, img.pixels.clone()).unwrap_or_default();
        let only_masked = self.inpaint_full_res && mask.is_some();
        let (w, h) = if only_masked {
            (picture.width, picture.height)
        } else {
            (r.width, r.height)
        };
        let fitted = crate::resize::fit(&rgb(&picture), w, h, mode);
        if let Some(mut m) = mask {
            if self.inpainting_mask_invert == 1 {
                m.pixels.iter_mut().for_each(|v| *v = 255 - *v);
            }
            // The mask follows the picture's fitting.
            let m = if only_masked {
                crate::resize::fit(&rgb(&m), picture.width, picture.height, crate::resize::ResizeMode::Just)
            } else {
                crate::resize::fit(&rgb(&m), w, h, mode)
            };
            r.mask = Some(Arc::new(m));
            r.mask_blur = self.mask_blur;
            r.inpaint_area = if only_masked { InpaintArea::Masked } else { InpaintArea::Whole };
            r.masked_padding = self.inpaint_full_res_padding.min(4096);
            r.masked_content = match self.inpainting_fill {
                0 => MaskedContent::Fill,
                2 => MaskedContent::LatentNoise,
                3 => MaskedContent::LatentNothing,
                _ => MaskedContent::Original,
            };
        }
        r.init_image = Some(Arc::new(fitted));
        r.strength = self.denoising_strength;
        Ok(p)
    }
}

/// The `info` JSON text of a response (what A1111's `Processed.js()` writes; clients read
/// `seed`, `all_seeds` and `infotexts`).
pub fn info(common: &Common, planned: &Planned, infotexts: &[String], model: &str) -> String {
    let seeds: Vec<u64> = (0..planned.images).map(|i| planned.seed.wrapping_add(u64::from(i))).collect();
    let n = infotexts.len();
    json!({
        "prompt": common.prompt,
        "all_prompts": vec![common.prompt.clone(); n],
        "negative_prompt": common.negative_prompt,
        "all_negative_prompts": vec![common.negative_prompt.clone(); n],
        "seed": planned.seed,
        "all_seeds": seeds,
        "subseed": -1,
        "all_subseeds": vec![-1; n],
        "subseed_strength": 0,
        "width": planned.request.width,
        "height": planned.request.height,
        "sampler_name": common.sampler_name.clone().or(common.sampler_index.clone()).unwrap_or_else(d_sampler),
        "cfg_scale": planned.request.cfg_scale,
        "steps": planned.request.steps,
        "batch_size": common.batch_size,
        "restore_faces": false,
        "sd_model_name": model,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": planned.request.init_image.as_ref().map(|_| planned.request.strength),
        "extra_generation_params": {},
        "index_of_first_image": 0,
        "infotexts": infotexts,
        "styles": [],
        "job_timestamp": "",
        "clip_skip": planned.request.clip_skip,
        "is_using_inpainting_conditioning": false,
        "version": concat!("latent-studio ", env!("CARGO_PKG_VERSION")),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txt(v: Value) -> Txt2Img {
        serde_json::from_value(v).expect("parses")
    }

    #[test]
    fn a1111_defaults_and_names() {
        let t = txt(json!({"prompt": "a cat"}));
        let p = t.plan(1, 42).expect("valid");
        let r = &p.request;
        assert_eq!((r.width, r.height, r.steps, r.cfg_scale, p.seed), (512, 512, 50, 7.0, 42));
        assert_eq!((r.solver.as_str(), r.schedule.as_str()), ("euler", "default"));
        let t = txt(json!({"sampler_name": "DPM++ 2M", "scheduler": "Karras", "seed": 7, "batch_size": 2, "n_iter": 3}));
        let p = t.plan(1, 42).expect("valid");
        assert_eq!(
            (p.request.solver.as_str(), p.request.schedule.as_str(), p.seed, p.images),
            ("dpm++2m", "karras", 7, 6)
        );
        let p = txt(json!({"sampler_name": "DPM++ 2M Karras"})).plan(1, 0).expect("valid");
        assert_eq!(p.request.schedule, "karras");
        let p = txt(json!({"override_settings": {"CLIP_stop_at_last_layers": 2}}))
            .plan(1, 0)
            .expect("valid");
        assert_eq!(p.request.clip_skip, 2);
    }

    #[test]
    fn bad_fields_are_named() {
        let errs = txt(json!({"width": 100000, "steps": 0, "sampler_name": "Nope", "batch_size": 100}))
            .plan(1, 0)
            .err()
            .expect("invalid");
        let fields: Vec<&str> = errs.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["width", "steps", "batch_size", "sampler_name"]);
        let errs = txt(json!({"enable_hr": true, "hr_scale": 9})).plan(1, 0).err().expect("invalid");
        assert_eq!(errs[0].field, "hr_scale");
    }
}

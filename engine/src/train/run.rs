//! The training run behind `latent-studio train`: the autoencoder first, then the text
//! encoder and UNet on its latents; checkpoints as it goes (re-running the same command
//! resumes), and at the end the embedded model's single file.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device};
use candle_nn::Optimizer;

use super::model::{IMAGE_SIZE, all_shapes, embedded_config, with_pooled_text};
use super::params::Params;
use super::trainer::{batch, batch_mixed, diffusion_loss, encode_latents, vae_loss};
use crate::error::{EngineError, Result};
use crate::nets::config::ModelConfig;
use crate::preview::LatentRgb;
use crate::rng::TorchRng;

/// What `latent-studio train` was asked for.
#[derive(Clone, Debug)]
pub struct TrainOptions {
    /// Folder for the checkpoint, the log and the exported model.
    pub out: PathBuf,
    pub vae_steps: u64,
    /// The autoencoder trains on random `vae_crop` x `vae_crop` crops (it is fully
    /// convolutional; a crop costs a quarter of a 64x64 image at 32) except for its last
    /// `vae_full_steps` steps, on whole images. 0 trains on whole images throughout.
    pub vae_crop: u32,
    pub vae_full_steps: u64,
    pub diffusion_steps: u64,
    pub batch: usize,
    pub vae_lr: f64,
    pub diffusion_lr: f64,
    /// Initialisation and noise seed.
    pub seed: u64,
    /// Seed of the procedural training set.
    pub data_seed: u64,
    pub save_every: u64,
    /// How the denoiser's pictures are drawn: a share forced to large shapes (on top of the
    /// set's own 39%; shape words need far more steps than colours and objects, BENCHMARKS.md)
    /// and the backgrounds shapes are drawn on.
    pub mix: super::dataset::Mix,
    /// Start a new run from this model's autoencoder (an exported embedded model, e.g. the
    /// shipped one) instead of training one: phase 1 is skipped.
    pub autoencoder_from: Option<PathBuf>,
    /// Give the UNet the pooled text embedding too ([`super::model::with_pooled_text`]).
    pub pooled_text: bool,
    /// Stop after this many seconds (then resume later); `None` runs to the end.
    pub time_limit: Option<f64>,
    /// Stop (after saving) once the denoiser reaches this step: a run stopped and resumed at
    /// the same steps is reproduced exactly (a resume reseeds the noise from the step and
    /// starts AdamW's moments afresh).
    pub stop_at: Option<u64>,
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            out: PathBuf::from("train-out"),
            vae_steps: 1600,
            vae_crop: 32,
            vae_full_steps: 150,
            diffusion_steps: 1800,
            batch: 16,
            vae_lr: 2e-3,
            diffusion_lr: 5e-4,
            seed: 1,
            data_seed: 1,
            save_every: 100,
            mix: super::dataset::Mix::default(),
            autoencoder_from: None,
            pooled_text: false,
            time_limit: None,
            stop_at: None,
        }
    }
}

/// The metadata the checkpoint carries between runs.
fn meta_u64(meta: &HashMap<String, String>, key: &str) -> u64 {
    meta.get(key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

struct Log {
    file: std::fs::File,
}

impl Log {
    fn line(&mut self, text: &str) {
        eprintln!("{text}");
        let _ = writeln!(self.file, "{text}");
    }
}

/// The metadata `latent_studio` JSON the engine reads to build this architecture.
pub fn model_metadata(cfg: &ModelConfig, extra: serde_json::Value) -> String {
    let mut v = serde_json::json!({
        "family": "sd1",
        "text_heads": cfg.text[0].heads,
        "text_activation": match cfg.text[0].activation {
            crate::nets::config::Activation::QuickGelu => "quick_gelu",
            crate::nets::config::Activation::Gelu => "gelu",
        },
        "unet_heads": cfg.unet.heads,
        "norm_groups": cfg.unet.groups,
        "guidance": cfg.default_guidance,
        "vae_scaling_factor": cfg.vae.scaling_factor,
        "rescale_betas_zero_snr": cfg.zero_terminal_snr,
        "prediction_type": match cfg.prediction {
            crate::protocol::Prediction::Epsilon => "epsilon",
            crate::protocol::Prediction::V => "v_prediction",
        },
        // Native size, in latent pixels (as diffusers' `sample_size`).
        "sample_size": IMAGE_SIZE as usize / cfg.vae.scale(),
    });
    if let (Some((per_value, _)), Some(o)) = (cfg.unet.addition, v.as_object_mut()) {
        o.insert("addition_time_embed_dim".into(), per_value.into());
    }
    if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in e {
            o.insert(k.clone(), val.clone());
        }
    }
    v.to_string()
}

/// Trains (or resumes) and exports. Returns the exported model's path once both phases are
/// done, `None` when the time limit stopped the run first.
pub fn train(o: &TrainOptions) -> Result<Option<PathBuf>> {
    let dev = Device::Cpu;
    std::fs::create_dir_all(&o.out).map_err(|e| io(&o.out, e))?;
    let mut log = Log {
        file: std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(o.out.join("train.log"))
            .map_err(|e| io(&o.out, e))?,
    };
    let mut cfg = embedded_config();
    if o.pooled_text {
        cfg = with_pooled_text(cfg);
    }
    let params = Params::init(&all_shapes(&cfg), o.seed, &dev)?;
    let ckpt = o.out.join("checkpoint.safetensors");
    let save = |meta: &HashMap<String, String>| params.save(&ckpt, meta.clone());
    let mut meta = if ckpt.exists() {
        let m = params.load(&ckpt)?;
        if (m.get("pooled_text").map(String::as_str) == Some("1")) != o.pooled_text {
            return Err(EngineError::InvalidRequest(format!(
                "{} was {} --pooled-text: run the same command that started it",
                ckpt.display(),
                if o.pooled_text { "started without" } else { "started with" }
            )));
        }
        log.line(&format!("resumed from {} ({m:?})", ckpt.display()));
        m
    } else {
        log.line(&format!(
            "new run: {:.2} M text, {:.2} M unet, {:.2} M vae parameters",
            params.count("te1.") as f64 / 1e6,
            params.count("unet.") as f64 / 1e6,
            params.count("vae.") as f64 / 1e6
        ));
        let mut meta = HashMap::new();
        if o.pooled_text {
            meta.insert("pooled_text".into(), "1".into());
        }
        if let Some(from) = &o.autoencoder_from {
            let theirs = params.load_prefix(from, "vae.")?;
            meta.insert("vae_step".into(), o.vae_steps.to_string());
            // The scale their latents were measured with (else measured again below).
            let scale = theirs
                .get("latent_studio")
                .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
                .and_then(|v| v.get("vae_scaling_factor").and_then(serde_json::Value::as_f64));
            if let Some(s) = scale {
                meta.insert("vae_scaling_factor".into(), format!("{s}"));
            }
            log.line(&format!("autoencoder from {} (scaling factor {scale:?})", from.display()));
            save(&meta)?;
        }
        meta
    };
    let started = Instant::now();
    let out_of_time = |started: &Instant| o.time_limit.is_some_and(|t| started.elapsed().as_secs_f64() > t);

    // Phase 1: the autoencoder.
    let mut step = meta_u64(&meta, "vae_step");
    if step < o.vae_steps {
        let mut opt = adamw(params.select(&["vae."]), o.vae_lr)?;
        let mut rng = TorchRng::new(o.seed ^ 0x5eed_0001 ^ step);
        let t0 = Instant::now();
        let first = step;
        while step < o.vae_steps {
            let b = batch(o.data_seed, &indices(step, o.batch), IMAGE_SIZE, &dev)?;
            let images = if o.vae_crop > 0 && o.vae_crop < IMAGE_SIZE && step + o.vae_full_steps < o.vae_steps {
                random_crop(&b.images, o.vae_crop as usize, cfg.vae.scale(), &mut rng)?
            } else {
                b.images
            };
            let l = vae_loss(&params, &cfg, &images, &mut rng, 1e-6)?;
            opt.set_learning_rate(cosine(o.vae_lr, step, o.vae_steps));
            opt.backward_step(&l.total)?;
            step += 1;
            if step.is_multiple_of(10) || step == o.vae_steps {
                let per = t0.elapsed().as_secs_f64() / (step - first) as f64;
                log.line(&format!(
                    "vae step {step}/{} l1 {:.4} kl {:.2} ({per:.2} s/step, {:.0} min left in this phase)",
                    o.vae_steps,
                    l.l1,
                    l.kl,
                    per * (o.vae_steps - step) as f64 / 60.0
                ));
            }
            if step.is_multiple_of(o.save_every) || step == o.vae_steps || out_of_time(&started) {
                meta.insert("vae_step".into(), step.to_string());
                save(&meta)?;
            }
            if out_of_time(&started) {
                log.line("time limit reached; run the same command again to resume");
                return Ok(None);
            }
        }
    }
    // The latents' scale: 1 / their standard deviation, as SD's 0.18215 was chosen.
    let scale = match meta.get("vae_scaling_factor").and_then(|v| v.parse::<f64>().ok()) {
        Some(s) => s,
        None => {
            let b = batch(o.data_seed ^ 0xfeed, &(0..256).collect::<Vec<_>>(), IMAGE_SIZE, &dev)?;
            let lat = encode_latents(&params, &cfg, &b.images)?;
            let std = lat.flatten_all()?.to_vec1::<f32>()?;
            let n = std.len() as f64;
            let mean = std.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
            let var = std.iter().map(|v| (f64::from(*v) - mean).powi(2)).sum::<f64>() / n;
            let s = 1.0 / var.sqrt().max(1e-6);
            meta.insert("vae_scaling_factor".into(), format!("{s}"));
            log.line(&format!("latent mean {mean:.3}, std {:.3}: scaling factor {s:.4}", var.sqrt()));
            save(&meta)?;
            s
        }
    };
    cfg.vae.scaling_factor = scale;

    // Phase 2: text encoder + UNet on the (frozen) autoencoder's latents.
    let mut step = meta_u64(&meta, "diffusion_step");
    meta.insert("large_shapes".into(), o.mix.large_shapes.to_string());
    let names: Vec<&str> = o
        .mix
        .shape_backgrounds
        .iter()
        .filter_map(|&i| super::dataset::COLORS.get(i).map(|c| c.0))
        .collect();
    meta.insert("shape_backgrounds".into(), names.join(","));
    meta.insert("diffusion_lr".into(), o.diffusion_lr.to_string());
    meta.insert("drop_shape_colour".into(), o.mix.drop_shape_colour.to_string());
    if step < o.diffusion_steps {
        let mut opt = adamw(params.select(&["unet.", "te1."]), o.diffusion_lr)?;
        let mut rng = TorchRng::new(o.seed ^ 0x5eed_0002 ^ step);
        let t0 = Instant::now();
        let first = step;
        let mut avg = 0f32;
        while step < o.diffusion_steps {
            let b = batch_mixed(o.data_seed, &indices(step + 1_000_000, o.batch), IMAGE_SIZE, &o.mix, &dev)?;
            let lat = encode_latents(&params, &cfg, &b.images)?;
            let l = diffusion_loss(&params, &cfg, &lat, &b.captions, &mut rng)?;
            opt.set_learning_rate(cosine(o.diffusion_lr, step, o.diffusion_steps));
            opt.backward_step(&l)?;
            avg += l.to_scalar::<f32>()?;
            step += 1;
            if step.is_multiple_of(10) || step == o.diffusion_steps {
                let per = t0.elapsed().as_secs_f64() / (step - first) as f64;
                log.line(&format!(
                    "diffusion step {step}/{} loss {:.4} ({per:.2} s/step, {:.0} min left in this phase)",
                    o.diffusion_steps,
                    avg / 10.0,
                    per * (o.diffusion_steps - step) as f64 / 60.0
                ));
                avg = 0.0;
            }
            let stop = o.stop_at == Some(step);
            if step.is_multiple_of(o.save_every) || step == o.diffusion_steps || out_of_time(&started) || stop {
                meta.insert("diffusion_step".into(), step.to_string());
                save(&meta)?;
            }
            if out_of_time(&started) || stop {
                log.line(if stop {
                    "stopped at the step asked for; run the same command again to resume"
                } else {
                    "time limit reached; run the same command again to resume"
                });
                return Ok(None);
            }
        }
    }
    let model = o.out.join("latent-studio-default.safetensors");
    let preview = fit_preview(&params, &cfg, o.data_seed ^ 0xbeef)?;
    log.line(&format!("latent preview coefficients: {}", preview.to_json()));
    export(&params, &cfg, &model, &meta, Some(&preview))?;
    log.line(&format!("exported {}", model.display()));
    Ok(Some(model))
}

/// Writes the model (f16, canonical names, `latent_studio` metadata) for the engine.
pub fn export(params: &Params, cfg: &ModelConfig, path: &Path, meta: &HashMap<String, String>, preview: Option<&LatentRgb>) -> Result<()> {
    let mut extra = serde_json::json!({
        "trained_by": format!("latent-studio train {}", env!("CARGO_PKG_VERSION")),
        "vae_steps": meta_u64(meta, "vae_step"),
        "diffusion_steps": meta_u64(meta, "diffusion_step"),
    });
    if let Some(share) = meta.get("large_shapes").and_then(|v| v.parse::<f64>().ok()) {
        extra["large_shapes"] = serde_json::json!(share);
    }
    for key in ["diffusion_lr", "drop_shape_colour"] {
        if let Some(v) = meta.get(key).and_then(|v| v.parse::<f64>().ok()) {
            extra[key] = serde_json::json!(v);
        }
    }
    if let Some(names) = meta.get("shape_backgrounds").filter(|n| !n.is_empty()) {
        extra["shape_backgrounds"] = serde_json::json!(names);
    }
    if let Some(p) = preview {
        extra["latent_rgb"] = p.to_json();
    }
    let metadata = HashMap::from([("latent_studio".to_string(), model_metadata(cfg, extra))]);
    params.save_as(path, DType::F16, metadata)
}

/// Live-preview coefficients for this model's latent space: least squares from 64 images'
/// (scaled) latents to the images averaged down to latent resolution.
pub fn fit_preview(params: &Params, cfg: &ModelConfig, seed: u64) -> Result<LatentRgb> {
    let b = batch(seed, &(0..64).collect::<Vec<_>>(), IMAGE_SIZE, &Device::Cpu)?;
    let lat = encode_latents(params, cfg, &b.images)?;
    let s = cfg.vae.scale();
    let small = b.images.avg_pool2d(s)?;
    // [b, c, h, w] -> rows of per-pixel channels.
    let rows = |t: &candle_core::Tensor| -> Result<Vec<f32>> { Ok(t.permute((0, 2, 3, 1))?.flatten_all()?.to_vec1::<f32>()?) };
    LatentRgb::fit(&rows(&lat)?, &rows(&small)?).ok_or_else(|| EngineError::Other("the latent preview fit is singular".into()))
}

fn adamw(vars: Vec<candle_core::Var>, lr: f64) -> Result<super::adamw::AdamW> {
    Ok(super::adamw::AdamW::new(
        vars,
        candle_nn::ParamsAdamW {
            lr,
            weight_decay: 1e-4,
            ..Default::default()
        },
    )?)
}

/// Cosine decay to 10% of the base rate, after a 50-step warm-up.
fn cosine(base: f64, step: u64, total: u64) -> f64 {
    if step < 50 {
        return base * (step + 1) as f64 / 50.0;
    }
    let p = step as f64 / total.max(1) as f64;
    base * (0.1 + 0.9 * 0.5 * (1.0 + (std::f64::consts::PI * p).cos()))
}

/// One random `size` x `size` window of every image in the batch (the same window for the
/// whole batch), at a multiple of `align` pixels so the latent grid lines up.
fn random_crop(images: &candle_core::Tensor, size: usize, align: usize, rng: &mut TorchRng) -> Result<candle_core::Tensor> {
    let (_, _, h, w) = images.dims4()?;
    let mut at = |len: usize| {
        let slots = (len.saturating_sub(size)) / align.max(1) + 1;
        ((rng.next_uniform_f32() * slots as f32) as usize).min(slots - 1) * align.max(1)
    };
    let (y, x) = (at(h), at(w));
    Ok(images.narrow(2, y, size.min(h))?.narrow(3, x, size.min(w))?.contiguous()?)
}

/// The data indices of step `step`: every step sees new samples.
fn indices(step: u64, batch: usize) -> Vec<u64> {
    (0..batch as u64).map(|i| step * batch as u64 + i).collect()
}

fn io(path: &Path, source: std::io::Error) -> EngineError {
    EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn autoencoder_crops_are_aligned_windows_of_the_images() {
        let dev = Device::Cpu;
        let b = batch(1, &[0, 1, 2], IMAGE_SIZE, &dev).expect("batch");
        let mut rng = TorchRng::new(5);
        let mut corners = std::collections::HashSet::new();
        for _ in 0..40 {
            let c = random_crop(&b.images, 32, 8, &mut rng).expect("crop");
            assert_eq!(c.dims4().expect("dims"), (3, 3, 32, 32));
            // Find the window: it must sit on the 8-pixel grid and hold exactly those pixels.
            let at = (0..=32)
                .step_by(8)
                .flat_map(|y| (0..=32).step_by(8).map(move |x| (y, x)))
                .find(|&(y, x)| {
                    let w = b.images.narrow(2, y, 32).and_then(|t| t.narrow(3, x, 32)).expect("window");
                    let d = (w - &c)
                        .and_then(|t| t.abs())
                        .and_then(|t| t.max_all())
                        .and_then(|t| t.to_scalar::<f32>());
                    d.expect("diff") == 0.0
                });
            corners.insert(at.expect("an aligned window of the batch"));
        }
        assert!(corners.len() >= 10, "crops should move around: {corners:?}");
        // A crop as large as the image is the image.
        let whole = random_crop(&b.images, 64, 8, &mut rng).expect("crop");
        assert_eq!(whole.dims4().expect("dims"), (3, 3, 64, 64));
    }

    #[test]
    fn a_run_stopped_at_a_step_resumes_to_the_same_model_and_keeps_its_options() {
        let base = std::env::temp_dir().join(format!("latent-stop-{}", std::process::id()));
        let opts = |name: &str| TrainOptions {
            out: base.join(name),
            vae_steps: 2,
            vae_full_steps: 1,
            diffusion_steps: 3,
            batch: 2,
            ..Default::default()
        };
        let run = |name: &str| -> Vec<u8> {
            let stopped = train(&TrainOptions {
                stop_at: Some(1),
                ..opts(name)
            })
            .expect("first part");
            assert!(stopped.is_none(), "--stop-at 1 must stop before the end");
            let meta = Params::init(&all_shapes(&embedded_config()), 1, &Device::Cpu)
                .and_then(|p| p.load(&base.join(name).join("checkpoint.safetensors")))
                .expect("checkpoint");
            assert_eq!(meta.get("diffusion_step").map(String::as_str), Some("1"));
            // The checkpoint has no pooled path: resuming with one is refused, not mixed.
            let wrong = train(&TrainOptions {
                pooled_text: true,
                ..opts(name)
            });
            assert!(wrong.is_err(), "a run without --pooled-text resumed with it");
            let model = train(&opts(name)).expect("resume").expect("runs to the end");
            std::fs::read(model).expect("model")
        };
        let (a, b) = (run("a"), run("b"));
        assert!(a == b, "two runs stopped and resumed at the same step differ");
        let _ = std::fs::remove_dir_all(&base);
    }
}

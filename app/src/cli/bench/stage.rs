//! `bench text|unet|vae|pipeline`: one network or a whole generation timed, with peak memory.

use std::path::PathBuf;

use anyhow::Result;

use super::peak_rss_gib;

/// What a timing benchmark times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    Text,
    Unet,
    Vae,
    Pipeline,
}

/// Options of `bench text|unet|vae|pipeline`.
pub struct StageArgs {
    pub stage: Stage,
    pub config: String,
    pub width: Option<u32>,
    pub height: Option<u32>,
    pub batch: usize,
    pub dtype: latent_engine::DType,
    pub device: latent_engine::DeviceKind,
    pub iters: usize,
    pub json: bool,
    pub vae_tiling: latent_engine::VaeTiling,
    pub steps: u32,
    pub cfg: f64,
    pub solver: String,
    pub feature_cache: u32,
    pub token_merge: f64,
    pub profile: bool,
}

/// Times one network, or a whole generation, on random inputs: random-weight presets (sd15,
/// sd21, sdxl), the embedded model or a checkpoint path. Prints median and min seconds per
/// iteration and peak resident memory; `pipeline` also the per-stage split and NFE.
pub fn stage(a: StageArgs) -> Result<()> {
    use super::presets::preset;
    use candle_core::Tensor;
    use latent_engine::nets::shapes::{random_weights, random_weights_where};
    use latent_engine::nets::unet::UnetInput;
    use latent_engine::nets::vae::VaeDecoder;
    use latent_engine::pipeline::{Pipeline, decode_budget, open_device};
    use std::time::Instant;
    let cdt = match a.dtype {
        latent_engine::DType::F32 => candle_core::DType::F32,
        latent_engine::DType::F16 => candle_core::DType::F16,
        latent_engine::DType::BF16 => candle_core::DType::BF16,
    };
    let t0 = Instant::now();
    let dev = open_device(a.device)?;
    let path = match a.config.as_str() {
        "embedded" => Some(
            crate::assets::embedded_model()
                .ok_or_else(|| anyhow::anyhow!("this build has no embedded model yet (assets/models/latent-studio-default.safetensors)"))?,
        ),
        name if preset(name).is_some() => None,
        other => Some(PathBuf::from(other)),
    };
    // A VAE benchmark on a preset builds the VAE alone, so peak memory is the decode's.
    let mut vae_only: Option<VaeDecoder> = None;
    let mut pipe: Option<Pipeline> = None;
    match (&path, preset(&a.config)) {
        (None, Some(cfg)) if a.stage == Stage::Vae => {
            let w = random_weights_where(&cfg, cdt, &dev, |n| n.starts_with("vae."))?;
            vae_only = Some(VaeDecoder::new(&w, &cfg.vae)?);
        }
        (None, Some(cfg)) => {
            let mut p = Pipeline::from_weights(random_weights(&cfg, cdt, &dev)?, cfg, &a.config, a.dtype, dev.clone())?;
            p.vae_tiling = a.vae_tiling;
            pipe = Some(p);
        }
        (Some(path), _) => {
            pipe = Some(Pipeline::load(&latent_engine::ModelSpec {
                dtype: a.dtype,
                device: a.device,
                vae_tiling: a.vae_tiling,
                ..latent_engine::ModelSpec::new(path)
            })?)
        }
        (None, None) => anyhow::bail!("unknown configuration '{}'", a.config),
    }
    eprintln!("model ready in {:.1} s", t0.elapsed().as_secs_f64());
    let (vae, native) = match (&vae_only, &pipe) {
        (Some(v), _) => (v, preset(&a.config).map_or((512, 512), |c| c.default_size)),
        (None, Some(p)) => (p.vae(), p.config.default_size),
        (None, None) => anyhow::bail!("no model"),
    };
    let (width, height) = (a.width.unwrap_or(native.0), a.height.unwrap_or(native.1));
    let scale = vae.config.scale() as u32;
    let (h, w) = ((height / scale) as usize, (width / scale) as usize);
    let mut times = vec![];
    let mut tiles = String::from("-");
    let mut split: Option<latent_engine::Timings> = None;
    latent_engine::profile::enable(a.profile);
    for _ in 0..a.iters.max(1) {
        let t = Instant::now();
        match (a.stage, &pipe) {
            (Stage::Text, Some(pipe)) => {
                pipe.encode_prompt("a photograph of an astronaut riding a horse", "", 1, true)?;
            }
            (Stage::Unet, Some(pipe)) => {
                let c = pipe.config.unet.in_channels;
                let x = Tensor::randn(0f32, 1.0, (a.batch, c, h, w), &dev)?.to_dtype(cdt)?;
                let ctx = Tensor::randn(0f32, 1.0, (a.batch, 77, pipe.config.unet.context_dim), &dev)?.to_dtype(cdt)?;
                let pooled = pipe
                    .config
                    .unet
                    .addition
                    .map(|(d, input)| Tensor::randn(0f32, 1.0, (a.batch, input - 6 * d), &dev))
                    .transpose()?;
                let ids = Tensor::from_vec(
                    [height as f32, width as f32, 0.0, 0.0, height as f32, width as f32].repeat(a.batch),
                    (a.batch, 6),
                    &dev,
                )?;
                let added = pooled.as_ref().map(|p| (p, &ids));
                pipe.unet().forward(&UnetInput {
                    sample: &x,
                    timesteps: &vec![500.0; a.batch],
                    context: &ctx,
                    added,
                    token_merge: a.token_merge,
                })?;
            }
            (Stage::Vae, _) => {
                let z = Tensor::randn(0f32, 1.0, (a.batch, vae.config.latent_channels, h, w), &dev)?;
                let budget = decode_budget();
                tiles = vae
                    .tile_for(a.vae_tiling, a.batch, h, w, budget)
                    .map(|t| format!("{t}x{t} latent"))
                    .unwrap_or_else(|| "whole".into());
                vae.decode_with(&z, a.vae_tiling, budget)?;
            }
            (Stage::Pipeline, Some(pipe)) => {
                let request = latent_engine::GenerateRequest {
                    prompt: "a photograph of an astronaut riding a horse".into(),
                    width,
                    height,
                    steps: a.steps,
                    cfg_scale: a.cfg,
                    solver: a.solver.clone(),
                    schedule: "default".into(),
                    seed: 1,
                    feature_cache: a.feature_cache,
                    token_merge: a.token_merge,
                    ..Default::default()
                };
                let job = pipe.validate(&request)?;
                tiles = vae
                    .tile_for(pipe.vae_tiling, 1, h, w, decode_budget())
                    .map(|t| format!("{t}x{t} latent"))
                    .unwrap_or_else(|| "whole".into());
                let out = pipe.generate(&job, &mut EveryPreview)?;
                split = Some(out.timings);
            }
            _ => anyhow::bail!("no model"),
        }
        // GPU work is queued: the iteration ends when the device has finished it.
        dev.synchronize()?;
        times.push(t.elapsed().as_secs_f64());
    }
    let profile = latent_engine::profile::take();
    latent_engine::profile::enable(false);
    let peak = peak_rss_gib();
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let (median, min) = (sorted[sorted.len() / 2], sorted[0]);
    let what = format!("{:?}", a.stage).to_lowercase();
    let s = |d: std::time::Duration| d.as_secs_f64();
    if a.json {
        let mut v = serde_json::json!({"stage": what, "config": a.config, "width": width, "height": height, "batch": a.batch,
            "dtype": a.dtype.name(), "device": a.device_name(), "iters": times.len(), "median_s": median, "min_s": min,
            "peak_rss_gib": peak, "vae_tiles": tiles});
        if let Some(t) = &split {
            v["split_s"] = serde_json::json!({"text": s(t.text), "unet": s(t.denoise), "vae": s(t.vae), "previews": s(t.previews)});
            v["nfe"] = serde_json::json!(t.nfe);
            v["shallow_nfe"] = serde_json::json!(t.shallow_nfe);
            v["feature_cache"] = serde_json::json!(a.feature_cache);
            v["steps"] = serde_json::json!(a.steps);
            v["solver"] = serde_json::json!(a.solver);
        }
        if a.profile {
            let per = |d: std::time::Duration| d.as_secs_f64() / times.len() as f64;
            v["profile_s"] = profile
                .iter()
                .map(|(st, d, _)| (st.name().to_string(), serde_json::json!(per(*d))))
                .collect();
        }
        println!("{v}");
    } else {
        println!("| stage | config | size | batch | dtype | device | median s | min s | peak RSS GiB | VAE tiles |");
        println!("|---|---|---|---|---|---|---|---|---|---|");
        println!(
            "| {what} | {} | {width}x{height} | {} | {} | {} | {median:.2} | {min:.2} | {peak:.2} | {tiles} |",
            a.config,
            a.batch,
            a.dtype.name(),
            a.device_name()
        );
        if let Some(t) = &split {
            println!();
            let cache = if a.feature_cache > 1 {
                format!(" feature cache {}", a.feature_cache)
            } else {
                String::new()
            };
            println!(
                "| {} steps {} cfg {}{cache} | text s | UNet s (cond+uncond) | VAE s | previews s | NFE (shallow) | s/NFE |",
                a.steps, a.solver, a.cfg
            );
            println!("|---|---|---|---|---|---|---|");
            println!(
                "| last run | {:.2} | {:.2} | {:.2} | {:.2} | {} ({}) | {:.3} |",
                s(t.text),
                s(t.denoise),
                s(t.vae),
                s(t.previews),
                t.nfe,
                t.shallow_nfe,
                s(t.denoise) / f64::from(t.nfe.max(1))
            );
        }
        if a.profile {
            println!();
            print!("{}", profile_table(&profile, &times));
        }
    }
    Ok(())
}

/// Where the time of the iterations went, per iteration: each profiled stage, then the rest
/// (element-wise work, copies, allocation) as what the stages do not cover.
fn profile_table(profile: &[(latent_engine::profile::Stage, std::time::Duration, u64)], times: &[f64]) -> String {
    let n = times.len().max(1) as f64;
    let whole = times.iter().sum::<f64>() / n;
    let mut out = String::from("| stage | s per iteration | share | calls per iteration |\n|---|---|---|---|\n");
    let mut covered = 0.0;
    for (stage, d, calls) in profile {
        let t = d.as_secs_f64() / n;
        covered += t;
        out += &format!(
            "| {} | {t:.3} | {:.1}% | {:.0} |\n",
            stage.name(),
            100.0 * t / whole,
            *calls as f64 / n
        );
    }
    let rest = (whole - covered).max(0.0);
    out += &format!(
        "| other (element-wise, copies, allocation) | {rest:.3} | {:.1}% | |\n",
        100.0 * rest / whole
    );
    out += &format!("| whole iteration | {whole:.3} | 100% | |\n");
    out
}

impl StageArgs {
    fn device_name(&self) -> String {
        match self.device {
            latent_engine::DeviceKind::Cpu => "cpu".into(),
            latent_engine::DeviceKind::Cuda(i) => format!("cuda:{i}"),
            latent_engine::DeviceKind::Metal(i) => format!("metal:{i}"),
        }
    }
}

/// Hooks that take a preview at every step, as the window does.
pub(super) struct EveryPreview;

impl latent_engine::pipeline::Hooks for EveryPreview {
    fn cancelled(&self) -> bool {
        false
    }
    fn progress(&mut self, _: u32, _: u32, _: std::time::Duration) {}
    fn wants_preview(&self, _: u32) -> bool {
        true
    }
    fn preview(&mut self, _: u32, _: latent_engine::protocol::ImageRgb8) {}
}

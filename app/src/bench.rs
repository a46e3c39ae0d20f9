//! `latent-studio bench oracle`: solver error against the exact Gaussian oracle.

use std::path::PathBuf;

use anyhow::Result;
use latent_engine::image_io::{encode_png, write_new_file};
use latent_engine::sampling::oracle::{endpoint_error, observed_order, steps_for_nfe};
use latent_engine::sampling::{SOLVERS, evaluations};

use crate::plot::{Series, log_log};

/// A `/proc/self/status` memory line (`VmRSS`, `VmHWM`) in bytes (Linux; 0 elsewhere).
fn status_bytes(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// Resident memory of this process in bytes.
fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// Time to merge, re-weight and remove a LoRA on a random-weight model of a real size.
pub fn lora(config: &str, rank: usize) -> Result<()> {
    use latent_engine::lora::LoraFile;
    use latent_engine::lora::file::Module;
    use latent_engine::lora::keys::Part;
    use latent_engine::model::synthetic;
    use latent_engine::pipeline::Pipeline;
    use std::time::Instant;
    let cfg = synthetic::preset(config).ok_or_else(|| anyhow::anyhow!("unknown --config '{config}' (sd15, sd21, sdxl)"))?;
    let t0 = Instant::now();
    let w = synthetic::random_weights(&cfg, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let mut pipe = Pipeline::from_weights(w, cfg, config, latent_engine::DType::F32, candle_core::Device::Cpu)?;
    eprintln!("built random {config} in {:.1} s", t0.elapsed().as_secs_f64());
    // A rank-`rank` LoRA on every attention projection and feed-forward layer of the UNet.
    let mut modules = std::collections::BTreeMap::new();
    let targets: Vec<(String, Vec<usize>)> = pipe
        .base_weights()
        .shapes
        .iter()
        .filter(|(k, s)| {
            k.starts_with("unet.")
                && s.len() == 2
                && (k.contains(".attn1.") || k.contains(".attn2.") || k.contains(".ff.net."))
                && k.ends_with(".weight")
        })
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    let mut lora_params = 0usize;
    for (name, shape) in &targets {
        let key = format!(
            "lora_unet_{}",
            name.trim_start_matches("unet.").trim_end_matches(".weight").replace('.', "_")
        );
        let dev = candle_core::Device::Cpu;
        let down = candle_core::Tensor::randn(0f32, 0.01, (rank, shape[1]), &dev)?;
        let up = candle_core::Tensor::randn(0f32, 0.01, (shape[0], rank), &dev)?;
        lora_params += down.elem_count() + up.elem_count();
        let parts = std::collections::HashMap::from([
            (Part::Down, down),
            (Part::Up, up),
            (Part::Alpha, candle_core::Tensor::new(&[rank as f32 / 2.0], &dev)?),
        ]);
        modules.insert(key.clone(), Module { key, parts });
    }
    let file = LoraFile {
        path: "synthetic".into(),
        name: format!("rank{rank}"),
        modules,
        stray: vec![],
        metadata: Default::default(),
        peft_alpha: None,
        tensors: targets.len() * 3,
        hash: "synthetic".into(),
    };
    let touched: usize = targets.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let reports = pipe.apply_loras(&[(&file, 1.0, 1.0)])?;
    let first = t.elapsed();
    let rss1 = rss_bytes();
    let mut changes = vec![];
    for s in [0.5f32, 0.8, 1.2] {
        let t = Instant::now();
        pipe.apply_loras(&[(&file, s, s)])?;
        changes.push(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    pipe.apply_loras(&[])?;
    let removal = t.elapsed();
    changes.sort_by(f64::total_cmp);
    println!("| model | LoRA | layers | apply | strength change (median of 3) | remove | extra memory held |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {config} (random, f32) | rank {rank}, {:.1} M params | {} | {:.2} s | {:.2} s | {:.2} s | {:.0} MiB merged weights (RSS +{:.0} MiB) |",
        lora_params as f64 / 1e6,
        reports[0].applied,
        first.as_secs_f64(),
        changes[1],
        removal.as_secs_f64(),
        touched as f64 * 4.0 / (1 << 20) as f64,
        (rss1.saturating_sub(rss0)) as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// NFE budgets of the table.
const NFES: [u32; 6] = [5, 10, 20, 50, 100, 200];

/// Prints the error table (or JSON) and optionally writes the plot.
pub fn oracle(plot: Option<PathBuf>, json: bool) -> Result<()> {
    let mut rows = vec![];
    for info in SOLVERS
        .iter()
        .filter(|s| !s.stochastic || matches!(s.name, "euler-a" | "dpm2-a" | "dpm++2s-a"))
    {
        // (budget, evaluations actually spent, error): two-evaluation solvers spend 2n - 1.
        let mut points = vec![];
        for nfe in NFES {
            let steps = steps_for_nfe(info, nfe);
            points.push((nfe, evaluations(info, steps), endpoint_error(info, steps)?));
        }
        let asymptotic: Vec<(u32, f64)> = points.iter().filter(|(n, _, _)| *n >= 40).map(|(_, s, e)| (*s, *e)).collect();
        let order = if asymptotic.len() >= 2 {
            observed_order(&asymptotic)
        } else {
            f64::NAN
        };
        let name = if info.stochastic {
            format!("{} (eta 0)", info.name)
        } else {
            info.name.to_string()
        };
        rows.push((name, info.order, order, points));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, claimed, observed, pts)| {
                serde_json::json!({"solver": name, "order": claimed, "observed_order": observed,
                    "points": pts.iter().map(|(_, n, e)| serde_json::json!({"nfe": n, "rel_error": e})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("| solver | order | observed (NFE >= 40) |");
        for n in NFES {
            print!(" NFE {n} |");
        }
        println!();
        println!("|---|---|---|{}", "---|".repeat(NFES.len()));
        for (name, claimed, observed, pts) in &rows {
            print!("| {name} | {claimed} | {observed:.2} |");
            for (budget, spent, e) in pts {
                if spent == budget {
                    print!(" {e:.2e} |")
                } else {
                    print!(" {e:.2e} ({spent}) |")
                }
            }
            println!();
        }
    }
    if let Some(path) = plot {
        // Solvers whose curves coincide with another's (euler = ddim = dpm-solver-1, ancestral
        // ones at eta 0) are left out of the figure.
        let plotted = [
            "euler",
            "heun",
            "lms",
            "dpm-solver-2",
            "dpm-solver-3",
            "dpm++2m",
            "dpm++3m",
            "dpm++2s",
            "unipc",
            "dpm2",
            "plms",
            "deis",
        ];
        let series: Vec<Series> = rows
            .iter()
            .filter(|(name, ..)| plotted.contains(&name.as_str()))
            .map(|(name, _, _, pts)| Series {
                label: name.clone(),
                points: pts.iter().map(|(_, n, e)| (*n as f64, *e)).collect(),
            })
            .collect();
        let img = log_log(
            &series,
            "nfe (network evaluations)",
            "relative error vs exact ode solution (gaussian data)",
            (0, 3),
            (-7, 0),
        );
        let _ = std::fs::remove_file(&path);
        write_new_file(&path, &encode_png(&img, "latent-studio bench oracle")?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

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
}

/// Peak resident memory of this process in GiB.
fn peak_rss_gib() -> f64 {
    status_bytes("VmHWM:") as f64 / (1u64 << 30) as f64
}

/// Times one network, or a whole generation, on random inputs: random-weight presets (sd15,
/// sd21, sdxl), the embedded model or a checkpoint path. Prints median and min seconds per
/// iteration and peak resident memory; `pipeline` also the per-stage split and NFE.
pub fn stage(a: StageArgs) -> Result<()> {
    use candle_core::Tensor;
    use latent_engine::model::synthetic;
    use latent_engine::model::unet::UnetInput;
    use latent_engine::model::vae::VaeDecoder;
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
            crate::app::embedded_model()
                .ok_or_else(|| anyhow::anyhow!("this build has no embedded model yet (assets/models/latent-studio-default.safetensors)"))?,
        ),
        name if synthetic::preset(name).is_some() => None,
        other => Some(PathBuf::from(other)),
    };
    // A VAE benchmark on a preset builds the VAE alone, so peak memory is the decode's.
    let mut vae_only: Option<VaeDecoder> = None;
    let mut pipe: Option<Pipeline> = None;
    match (&path, synthetic::preset(&a.config)) {
        (None, Some(cfg)) if a.stage == Stage::Vae => {
            let w = synthetic::random_weights_where(&cfg, cdt, &dev, |n| n.starts_with("vae."))?;
            vae_only = Some(VaeDecoder::new(&w, &cfg.vae)?);
        }
        (None, Some(cfg)) => {
            let mut p = Pipeline::from_weights(synthetic::random_weights(&cfg, cdt, &dev)?, cfg, &a.config, a.dtype, dev.clone())?;
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
        (Some(v), _) => (v, synthetic::preset(&a.config).map_or((512, 512), |c| c.default_size)),
        (None, Some(p)) => (p.vae(), p.config.default_size),
        (None, None) => anyhow::bail!("no model"),
    };
    let (width, height) = (a.width.unwrap_or(native.0), a.height.unwrap_or(native.1));
    let scale = vae.config.scale() as u32;
    let (h, w) = ((height / scale) as usize, (width / scale) as usize);
    let mut times = vec![];
    let mut tiles = String::from("-");
    let mut split: Option<latent_engine::Timings> = None;
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
    }
    Ok(())
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
struct EveryPreview;

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

/// Options of `bench solvers`.
pub struct SolversArgs {
    pub config: String,
    pub prompts: Vec<String>,
    pub seeds: u64,
    pub nfes: Vec<u32>,
    pub reference_steps: u32,
    pub schedule: String,
    pub cfg: f64,
    pub solvers: Option<Vec<String>>,
    pub plot: Option<PathBuf>,
    pub json: bool,
}

/// One row of `bench solvers`: solver, stochastic?, per budget (evaluations spent, distance).
type SolverRow = (String, bool, Vec<(u32, f64)>);

/// The prompts `bench solvers` averages over by default (from the embedded model's vocabulary:
/// its shapes are drawn on black or white backgrounds, its objects on any colour).
pub const SOLVER_PROMPTS: [&str; 4] = [
    "a red circle on a white background",
    "a happy face on a green background",
    "a small yellow star in the top left on a black background",
    "a house on a pink background",
];

/// Image distance of every solver at each NFE budget from a long reference run (DPM-Solver++
/// 2M at `reference_steps` on the same schedule) from the same seed: root mean square over
/// RGB in [0, 1], averaged over prompts and seeds. Budgets count the solver's network
/// evaluations per image (CFG's second pass not counted: it doubles every column alike).
pub fn solvers(a: SolversArgs) -> Result<()> {
    use latent_engine::GenerateRequest;
    use latent_engine::pipeline::Pipeline;
    let path = match a.config.as_str() {
        "embedded" => {
            crate::app::embedded_model().ok_or_else(|| anyhow::anyhow!("this build has no embedded model yet; give a checkpoint path"))?
        }
        p => PathBuf::from(p),
    };
    let pipe = Pipeline::load(&latent_engine::ModelSpec::new(&path))?;
    let (w, h) = pipe.config.default_size;
    let run = |solver: &str, steps: u32, prompt: &str, seed: u64| -> Result<Vec<f32>> {
        let req = GenerateRequest {
            prompt: prompt.to_string(),
            width: w,
            height: h,
            steps,
            cfg_scale: a.cfg,
            seed,
            solver: solver.to_string(),
            schedule: a.schedule.clone(),
            preview_every: 0,
            ..Default::default()
        };
        let out = pipe.generate(&pipe.validate(&req)?, &mut EveryPreview)?;
        Ok(out.image.pixels.iter().map(|v| f32::from(*v) / 255.0).collect())
    };
    let chosen: Vec<&latent_engine::sampling::SolverInfo> = SOLVERS
        .iter()
        .filter(|s| a.solvers.as_ref().is_none_or(|list| list.iter().any(|n| n == s.name)))
        .collect();
    // (solver, per budget: (evaluations spent, sum of distances)).
    let mut table: Vec<SolverRow> = chosen
        .iter()
        .map(|s| (s.name.to_string(), s.stochastic, a.nfes.iter().map(|_| (0u32, 0f64)).collect()))
        .collect();
    let mut pairs = 0u64;
    for prompt in &a.prompts {
        for seed in 1..=a.seeds {
            let reference = run("dpm++2m", a.reference_steps, prompt, seed)?;
            eprintln!("reference for \"{prompt}\", seed {seed} done");
            for (row, info) in table.iter_mut().zip(&chosen) {
                for (cell, &nfe) in row.2.iter_mut().zip(&a.nfes) {
                    let steps = steps_for_nfe(info, nfe);
                    let img = run(info.name, steps, prompt, seed)?;
                    let mse = img.iter().zip(&reference).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>() / img.len() as f64;
                    *cell = (evaluations(info, steps), cell.1 + mse.sqrt());
                }
            }
            pairs += 1;
        }
    }
    let rows: Vec<SolverRow> = table
        .into_iter()
        .map(|(n, st, cells)| {
            (
                n,
                st,
                cells.into_iter().map(|(spent, sum)| (spent, sum / pairs.max(1) as f64)).collect(),
            )
        })
        .collect();
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, st, cells)| {
                serde_json::json!({"solver": n, "stochastic": st, "points": cells.iter().zip(&a.nfes)
                    .map(|((spent, d), budget)| serde_json::json!({"nfe": budget, "spent": spent, "rmse": d})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "RMSE (RGB in [0, 1]) from a {}-step DPM++ 2M reference, {} schedule, CFG {}, {} prompts x {} seeds, {}x{}",
            a.reference_steps,
            a.schedule,
            a.cfg,
            a.prompts.len(),
            a.seeds,
            w,
            h
        );
        print!("| solver |");
        for n in &a.nfes {
            print!(" NFE {n} |");
        }
        println!();
        println!("|---|{}", "---|".repeat(a.nfes.len()));
        for (name, stochastic, cells) in &rows {
            print!("| {name}{} |", if *stochastic { " (stochastic)" } else { "" });
            for ((spent, d), budget) in cells.iter().zip(&a.nfes) {
                if spent == budget {
                    print!(" {d:.4} |");
                } else {
                    print!(" {d:.4} ({spent}) |");
                }
            }
            println!();
        }
    }
    if let Some(path) = a.plot {
        let series: Vec<Series> = rows
            .iter()
            .filter(|(_, stochastic, _)| !stochastic)
            .map(|(name, _, cells)| Series {
                label: name.clone(),
                points: cells.iter().map(|(n, d)| (f64::from(*n), d.max(1e-6))).collect(),
            })
            .collect();
        let img = log_log(
            &series,
            "nfe (network evaluations per image)",
            "rmse vs 1000-step reference",
            (0, 2),
            (-4, 0),
        );
        let _ = std::fs::remove_file(&path);
        write_new_file(&path, &encode_png(&img, "latent-studio bench solvers")?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `bench attention`: attention alone at the shapes the real models run (batch 2 = one CFG
/// step), through [`latent_engine::model::layers::attention`] (the fused kernel where this
/// build and the inputs allow it) and through the chunked path, with the time of each and the
/// largest difference between them relative to the largest output value.
pub fn attention(device: latent_engine::DeviceKind, dtype: latent_engine::DType, iters: usize) -> Result<()> {
    use candle_core::{DType as C, Tensor};
    use latent_engine::model::layers::{attention, attention_is_fused, attention_unfused};
    use std::time::Instant;
    let dev = latent_engine::pipeline::open_device(device)?;
    let cdt = match dtype {
        latent_engine::DType::F32 => C::F32,
        latent_engine::DType::F16 => C::F16,
        latent_engine::DType::BF16 => C::BF16,
    };
    // (what, query tokens, key tokens, heads, head size)
    let shapes = [
        ("SD 1.x 512, level 1 self", 4096, 4096, 8, 40),
        ("SD 1.x 512, level 1 cross", 4096, 77, 8, 40),
        ("SD 1.x 512, level 2 self", 1024, 1024, 8, 80),
        ("SD 1.x 512, level 3 self", 256, 256, 8, 160),
        ("SD 2.x 768, level 1 self", 9216, 9216, 5, 64),
        ("SDXL 1024, level 2 self", 4096, 4096, 10, 64),
        ("SDXL 1024, level 2 cross", 4096, 77, 10, 64),
        ("SDXL 1024, level 3 self", 1024, 1024, 20, 64),
    ];
    println!("attention on {device:?}, {}, batch 2, median of {iters}", dtype.name());
    println!("| shape | queries x keys, heads x size | fused | chunked s | fused s | speed-up | max diff / max |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (what, n, m, heads, d)) in shapes.into_iter().enumerate() {
        let rand = |len: usize, salt: u64| -> Result<Tensor> {
            let t = Tensor::randn(0f32, 1f32, (2, len, heads * d), &candle_core::Device::Cpu)?;
            // A fixed, different tensor per shape and role without a global seed.
            let shift = (i as f64 * 0.01) + salt as f64 * 0.001;
            Ok((t + shift)?.to_dtype(cdt)?.to_device(&dev)?)
        };
        let (q, k, v) = (rand(n, 1)?, rand(m, 2)?, rand(m, 3)?);
        let fused = attention_is_fused(&q, heads, false);
        let time = |f: &dyn Fn() -> latent_engine::Result<Tensor>| -> Result<(f64, Tensor)> {
            let mut out = f()?;
            dev.synchronize()?;
            let mut times = vec![];
            for _ in 0..iters {
                let t0 = Instant::now();
                out = f()?;
                dev.synchronize()?;
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            Ok((times[times.len() / 2], out))
        };
        let (t_chunked, a) = time(&|| attention_unfused(&q, &k, &v, heads, false))?;
        let (t_fused, b) = time(&|| attention(&q, &k, &v, heads, false))?;
        let a = a.to_dtype(C::F32)?;
        let diff = (&a - b.to_dtype(C::F32)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let top = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-12);
        println!(
            "| {what} | {n} x {m}, {heads} x {d} | {} | {t_chunked:.4} | {t_fused:.4} | {:.2}x | {:.1e} |",
            if fused { "yes" } else { "no" },
            t_chunked / t_fused.max(1e-12),
            diff / top
        );
    }
    Ok(())
}

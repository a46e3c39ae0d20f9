//! Subcommands: `generate`, `info`, `solvers`, `lora-info`, `bench`. No subcommand opens the window.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use latent_engine::image_io::{encode_png, latents_safetensors, next_free_name, write_new_file};
use latent_engine::lora::LoraFile;
use latent_engine::pipeline::inspect;
use latent_engine::protocol::{DType, DeviceKind, Event, GenerateRequest, LoraSpec, ModelSpec, Prediction, VaeTiling};
use latent_engine::sampling::SOLVERS;
use latent_engine::sampling::schedule::SCHEDULES;
use latent_engine::{EngineConfig, EngineHandle};

#[derive(Parser, Debug)]
#[command(
    name = "latent-studio",
    version,
    about = "A native desktop studio for fast diffusion image generation"
)]
pub struct Args {
    #[command(subcommand)]
    command: Option<Cmd>,
    /// Window: open this model (a .safetensors file or diffusers folder) instead of the
    /// remembered one.
    #[arg(long)]
    model: Option<PathBuf>,
    /// Window: save finished images here instead of the remembered output folder.
    #[arg(long)]
    output: Option<PathBuf>,
    /// Window: renderer to use.
    #[arg(long, value_enum, default_value = "auto")]
    renderer: crate::gui::RendererChoice,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Generate one image headlessly (same engine as the window).
    Generate(Box<GenerateArgs>),
    /// Show what a checkpoint is: family, inferred configuration, dtypes, parameter counts.
    Info {
        /// A .safetensors checkpoint or a diffusers folder.
        path: PathBuf,
    },
    /// List the solvers with their order and cost, and the schedules.
    Solvers,
    /// Show what a LoRA file is: format, target family, rank, alpha, tensors, trigger words.
    LoraInfo {
        /// A LoRA .safetensors file.
        path: PathBuf,
    },
    /// Write the embedded model's procedural training set (PNG files + captions.jsonl) into a
    /// new folder, and optionally a contact sheet of the first 64 images.
    MakeDataset {
        /// A folder that does not exist yet (or is empty).
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 256)]
        count: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 64)]
        size: u32,
        /// Also write an 8x8 grid of the first images here (a new file).
        #[arg(long)]
        sheet: Option<PathBuf>,
    },
    /// Train the embedded default model from scratch on the procedural set: the autoencoder,
    /// then text encoder + UNet. Re-running the same command resumes from DIR's checkpoint.
    Train {
        /// Folder for checkpoint.safetensors, train.log and the exported model.
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 1600)]
        vae_steps: u64,
        /// Train the autoencoder on random crops of this size (0: whole images)...
        #[arg(long, default_value_t = 32)]
        vae_crop: u32,
        /// ...except for its last this many steps, on whole images.
        #[arg(long, default_value_t = 150)]
        vae_full_steps: u64,
        #[arg(long, default_value_t = 1800)]
        diffusion_steps: u64,
        #[arg(long, default_value_t = 16)]
        batch: usize,
        /// Peak learning rate of the text encoder + UNet (50-step warm-up, then cosine to 10%).
        #[arg(long, default_value_t = 5e-4)]
        lr: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long, default_value_t = 1)]
        data_seed: u64,
        #[arg(long, default_value_t = 100)]
        save_every: u64,
        /// Share (0-1) of the denoiser's pictures forced to be large shapes, on top of the
        /// set's own 39%: shape words need more steps than colours and objects.
        #[arg(long, default_value_t = 0.0)]
        large_shapes: f32,
        /// Draw shapes on these backgrounds only (comma-separated colour names, e.g.
        /// black,white); objects keep every background. Default: any colour.
        #[arg(long, value_delimiter = ',')]
        shape_backgrounds: Vec<String>,
        /// Share (0-1) of the shapes whose caption leaves out the shape's colour ("a star on a
        /// black background").
        #[arg(long, default_value_t = 0.0)]
        drop_shape_colour: f32,
        /// Take the autoencoder from this model (e.g. the shipped one) and train only the
        /// text encoder and UNet (a new run only; a checkpoint in --out wins).
        #[arg(long)]
        autoencoder_from: Option<PathBuf>,
        /// Also give the UNet the text encoder's pooled output (end token) through
        /// `add_embedding`, as SDXL does: the whole prompt reaches every block at once.
        #[arg(long)]
        pooled_text: bool,
        /// Stop (after saving) once this many minutes have passed; resume later.
        #[arg(long)]
        minutes: Option<f64>,
        /// Stop (after saving) once the denoiser reaches this step; resume later. Stopping
        /// and resuming at the same steps reproduces a run exactly.
        #[arg(long)]
        stop_at: Option<u64>,
    },
    /// Train a LoRA on a model (kohya format, for the LoRA panel): on your own pictures
    /// (--images DIR: PNG files, captions from NAME.txt, the PNG's prompt, or the file name)
    /// or on the procedural set redrawn in a style (--style outline).
    TrainLora {
        #[arg(long)]
        model: PathBuf,
        /// The LoRA file to write (never an existing file).
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        images: Option<PathBuf>,
        #[arg(long, default_value = "outline")]
        style: String,
        #[arg(long, default_value_t = 300)]
        steps: u64,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long, default_value_t = 4)]
        rank: usize,
        #[arg(long, default_value_t = 1e-3)]
        lr: f64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Benchmarks that print figures (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: BenchCmd,
    },
}

/// What every timing benchmark takes.
#[derive(clap::Args, Debug, Clone)]
struct StageOpts {
    /// sd15, sd21, sdxl (random weights, no download), embedded, or a checkpoint path.
    #[arg(long, default_value = "sd15")]
    config: String,
    /// Image width in pixels (default: the configuration's native size).
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    /// Batch (unet: default 2 = one CFG step; others: 1).
    #[arg(long)]
    batch: Option<usize>,
    #[arg(long, default_value = "f32")]
    dtype: String,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value_t = 3)]
    iters: usize,
    #[arg(long)]
    json: bool,
    /// vae/pipeline: `auto` (tile when the whole decode would not fit), `off`, or a tile
    /// size in latent pixels.
    #[arg(long, default_value = "auto")]
    vae_tile: String,
    /// pipeline: steps, guidance and solver of the timed generation.
    #[arg(long, default_value_t = 20)]
    steps: u32,
    #[arg(long, default_value_t = 7.0)]
    cfg: f64,
    #[arg(long, default_value = "dpm++2m")]
    solver: String,
    /// pipeline: feature cache interval (1 = off).
    #[arg(long, default_value_t = 1)]
    feature_cache: u32,
    /// unet/pipeline: token merging ratio (0 = off).
    #[arg(long, default_value_t = 0.0)]
    token_merge: f64,
}

#[derive(Subcommand, Debug)]
enum BenchCmd {
    /// Solver error vs NFE against the exact solution for Gaussian data.
    Oracle {
        /// Also draw the log-log plot to this PNG (replaced if it exists: it is a figure, not
        /// an image of yours).
        #[arg(long)]
        plot: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Image distance of every solver at NFE 5/10/20/50 from a long reference run of the
    /// same seed, averaged over prompts and seeds (a real model: `embedded` or a path).
    Solvers {
        #[arg(long, default_value = "embedded")]
        config: String,
        /// Prompts to average over (repeatable; default: four from the embedded vocabulary).
        #[arg(long = "prompt")]
        prompts: Vec<String>,
        #[arg(long, default_value_t = 2)]
        seeds: u64,
        #[arg(long, value_delimiter = ',', default_value = "5,10,20,50")]
        nfe: Vec<u32>,
        #[arg(long, default_value_t = 1000)]
        reference_steps: u32,
        #[arg(long, default_value = "karras")]
        schedule: String,
        #[arg(long, default_value_t = 4.0)]
        cfg: f64,
        /// Only these solvers (comma-separated names).
        #[arg(long, value_delimiter = ',')]
        solvers: Option<Vec<String>>,
        #[arg(long)]
        plot: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
    /// Time the text encoders (random-weight preset, `embedded` or a checkpoint).
    Text(StageOpts),
    /// Time one UNet evaluation (batch 2 = one CFG step).
    Unet(StageOpts),
    /// Time one VAE decode (a preset builds the VAE alone, so the peak memory is its own).
    Vae(StageOpts),
    /// Time a whole generation, split into text, UNet (cond + uncond batched), VAE and
    /// previews, with its NFE.
    Pipeline(StageOpts),
    /// Attention alone at the shapes of SD 1.x, SD 2.x and SDXL: the fused GPU kernel (a
    /// `flash-attn` build) against the chunked path, time and largest difference.
    Attention {
        #[arg(long, default_value = "cpu")]
        device: String,
        #[arg(long, default_value = "f16")]
        dtype: String,
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
    /// Time to merge, change and remove a LoRA on a random-weight model (no download).
    Lora {
        /// sd15, sd21 or sdxl.
        #[arg(long, default_value = "sd15")]
        config: String,
        #[arg(long, default_value_t = 32)]
        rank: usize,
    },
}

#[derive(clap::Args, Debug)]
struct GenerateArgs {
    /// Checkpoint: a .safetensors single file or a diffusers folder (default: the embedded
    /// model, when this build has one).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative: String,
    /// Image width in pixels (multiple of 8); default: the model's native size.
    #[arg(long)]
    width: Option<u32>,
    /// Image height in pixels (multiple of 8); default: the model's native size.
    #[arg(long)]
    height: Option<u32>,
    #[arg(long, default_value_t = 20)]
    steps: u32,
    /// Classifier-free guidance scale (1 disables guidance and halves the cost); default: the
    /// one the model is made for (7 for most, 2 for the embedded model, 1 for Turbo/LCM).
    #[arg(long)]
    cfg: Option<f64>,
    /// Seed of the initial noise (torch CPU generator compatible); random when omitted.
    #[arg(long)]
    seed: Option<u64>,
    /// Solver (see `latent-studio solvers`).
    #[arg(long, default_value = "euler")]
    solver: String,
    /// Schedule of noise levels: default, karras, exponential, trailing, ays, ...
    #[arg(long, default_value = "default")]
    schedule: String,
    /// Noise scale of solvers that have one (DDIM's eta; 1 for ancestral solvers).
    #[arg(long)]
    eta: Option<f64>,
    /// Guidance rescale phi in [0, 1] (for v-prediction / zero-SNR models; 0 = off).
    #[arg(long, default_value_t = 0.0)]
    cfg_rescale: f64,
    /// Fraction of the steps that run the unconditional pass; later steps cost half.
    #[arg(long, default_value_t = 1.0)]
    cfg_until: f64,
    /// A1111's clip skip (1 = last layer).
    #[arg(long, default_value_t = 1)]
    clip_skip: u32,
    /// Feature cache (DeepCache): the whole UNet every N steps, only its top level between
    /// (1 = off; 3 is a common choice).
    #[arg(long, default_value_t = 1)]
    feature_cache: u32,
    /// Token merging (ToMe for SD): share of the top level's tokens merged away before each
    /// self-attention (0 = off; 0.3-0.5 usual; A1111's "Token merging ratio").
    #[arg(long, default_value_t = 0.0)]
    token_merge: f64,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Override what the checkpoint says it predicts: eps or v.
    #[arg(long)]
    prediction: Option<String>,
    /// Output PNG (never overwritten); default: the next free `latent-NNNNN.png` here.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Also write the final latents (before VAE decode) as tensor `latents`.
    #[arg(long)]
    latents_out: Option<PathBuf>,
    /// VAE tiling: `auto` (tile only when the whole decode would not fit in half the free
    /// memory), `off`, or a tile size in latent pixels (8 latent pixels overlap).
    #[arg(long, default_value = "auto")]
    vae_tile: String,
    /// A LoRA to apply, with an optional strength (default 1): FILE or FILE:0.8. Repeatable.
    #[arg(long = "lora", value_name = "FILE[:STRENGTH]")]
    loras: Vec<String>,
    /// A folder searched for `<lora:name:weight>` tags in the prompt. Repeatable; the folders
    /// of --lora files are searched too.
    #[arg(long = "lora-dir", value_name = "DIR")]
    lora_dirs: Vec<PathBuf>,
}

/// `FILE[:STRENGTH]`: the strength is the part after the last colon when it is a number (so
/// Windows paths like `C:\x.safetensors` keep their drive letter).
fn parse_lora_arg(arg: &str) -> Result<LoraSpec> {
    if let Some((path, s)) = arg.rsplit_once(':')
        && let Ok(strength) = s.trim().parse::<f32>()
    {
        if !strength.is_finite() {
            bail!("LoRA strength must be a number, got '{s}'");
        }
        return Ok(LoraSpec::new(path, strength));
    }
    Ok(LoraSpec::new(arg, 1.0))
}

fn stage(stage: crate::bench::Stage, o: StageOpts) -> Result<()> {
    let dtype = DType::parse(&o.dtype).with_context(|| format!("unknown --dtype '{}' (f32, f16, bf16)", o.dtype))?;
    let device = DeviceKind::parse(&o.device).with_context(|| format!("unknown --device '{}' (cpu, cuda, metal)", o.device))?;
    let vae_tiling =
        VaeTiling::parse(&o.vae_tile).with_context(|| format!("--vae-tile: '{}' is not auto, off or a tile size", o.vae_tile))?;
    crate::bench::stage(crate::bench::StageArgs {
        stage,
        config: o.config,
        width: o.width,
        height: o.height,
        batch: o.batch.unwrap_or(if stage == crate::bench::Stage::Unet { 2 } else { 1 }),
        dtype,
        device,
        iters: o.iters,
        json: o.json,
        vae_tiling,
        steps: o.steps,
        cfg: o.cfg,
        solver: o.solver,
        feature_cache: o.feature_cache,
        token_merge: o.token_merge,
    })
}

/// Runs the parsed command line.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        None => crate::gui::run(crate::gui::WindowArgs {
            model: args.model,
            output: args.output,
            renderer: args.renderer,
        }),
        Some(Cmd::Generate(g)) => generate(*g),
        Some(Cmd::Info { path }) => info(&path),
        Some(Cmd::TrainLora {
            model,
            out,
            images,
            style,
            steps,
            batch,
            rank,
            lr,
            seed,
        }) => {
            use latent_engine::train::lora::{LoraOptions, Style, train_lora};
            let style = Style::parse(&style).with_context(|| format!("unknown --style '{style}' (outline)"))?;
            let images = match images {
                Some(dir) => crate::training::training_pictures(&dir)?,
                None => vec![],
            };
            let o = LoraOptions {
                model,
                out: out.clone(),
                images,
                style,
                steps,
                batch: batch.max(1),
                rank,
                lr,
                seed,
                data_seed: seed,
            };
            let loss = train_lora(&o, |l| eprintln!("{l}"))?;
            println!("wrote {} (final loss {loss:.4})", out.display());
            Ok(())
        }
        Some(Cmd::Train {
            out,
            vae_steps,
            vae_crop,
            vae_full_steps,
            diffusion_steps,
            batch,
            lr,
            seed,
            data_seed,
            save_every,
            large_shapes,
            shape_backgrounds,
            drop_shape_colour,
            autoencoder_from,
            pooled_text,
            minutes,
            stop_at,
        }) => {
            use latent_engine::train::dataset::{COLORS, Mix};
            let shape_backgrounds = shape_backgrounds
                .iter()
                .map(|name| {
                    COLORS.iter().position(|(n, _)| n == name).with_context(|| {
                        format!(
                            "unknown colour '{name}' in --shape-backgrounds ({})",
                            COLORS.map(|c| c.0).join(", ")
                        )
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let o = latent_engine::train::run::TrainOptions {
                out,
                vae_steps,
                vae_crop,
                vae_full_steps,
                diffusion_steps,
                batch: batch.max(1),
                diffusion_lr: if lr.is_finite() && lr > 0.0 {
                    lr
                } else {
                    bail!("--lr must be a positive number")
                },
                seed,
                data_seed,
                save_every: save_every.max(1),
                mix: Mix {
                    large_shapes: large_shapes.clamp(0.0, 1.0),
                    shape_backgrounds,
                    drop_shape_colour: drop_shape_colour.clamp(0.0, 1.0),
                },
                autoencoder_from,
                pooled_text,
                time_limit: minutes.map(|m| m * 60.0),
                stop_at,
                ..Default::default()
            };
            match latent_engine::train::run::train(&o)? {
                Some(path) => println!("model: {}", path.display()),
                None => println!("stopped before the end (--minutes or --stop-at); run the same command to resume"),
            }
            Ok(())
        }
        Some(Cmd::MakeDataset {
            out,
            count,
            seed,
            size,
            sheet,
        }) => crate::training::make_dataset(&out, count, seed, size, sheet.as_deref()),
        Some(Cmd::LoraInfo { path }) => lora_info(&path),
        Some(Cmd::Bench {
            what: BenchCmd::Oracle { plot, json },
        }) => crate::bench::oracle(plot, json),
        Some(Cmd::Bench {
            what: BenchCmd::Attention { device, dtype, iters },
        }) => {
            let device = DeviceKind::parse(&device).with_context(|| format!("unknown --device '{device}' (cpu, cuda, metal)"))?;
            let dtype = latent_engine::DType::parse(&dtype).with_context(|| format!("unknown --dtype '{dtype}' (f32, f16, bf16)"))?;
            crate::bench::attention(device, dtype, iters.max(1))
        }
        Some(Cmd::Bench {
            what: BenchCmd::Lora { config, rank },
        }) => crate::bench::lora(&config, rank),
        Some(Cmd::Bench {
            what:
                BenchCmd::Solvers {
                    config,
                    prompts,
                    seeds,
                    nfe,
                    reference_steps,
                    schedule,
                    cfg,
                    solvers,
                    plot,
                    json,
                },
        }) => crate::bench::solvers(crate::bench::SolversArgs {
            config,
            prompts: if prompts.is_empty() {
                crate::bench::SOLVER_PROMPTS.iter().map(|p| p.to_string()).collect()
            } else {
                prompts
            },
            seeds: seeds.max(1),
            nfes: nfe,
            reference_steps,
            schedule,
            cfg,
            solvers,
            plot,
            json,
        }),
        Some(Cmd::Bench { what: BenchCmd::Text(o) }) => stage(crate::bench::Stage::Text, o),
        Some(Cmd::Bench { what: BenchCmd::Unet(o) }) => stage(crate::bench::Stage::Unet, o),
        Some(Cmd::Bench { what: BenchCmd::Vae(o) }) => stage(crate::bench::Stage::Vae, o),
        Some(Cmd::Bench {
            what: BenchCmd::Pipeline(o),
        }) => stage(crate::bench::Stage::Pipeline, o),
        Some(Cmd::Solvers) => {
            println!(
                "{:<13} {:>5} {:>9} {:>10}  reference (diffusers)",
                "solver", "order", "NFE/step", "stochastic"
            );
            for s in SOLVERS {
                let stochastic = if s.stochastic { "yes" } else { "no" };
                println!(
                    "{:<13} {:>5} {:>9} {:>10}  {}",
                    s.name, s.order, s.evals_per_step, stochastic, s.reference
                );
            }
            println!("\nNFE per step doubles with classifier-free guidance (unless --cfg 1); --cfg-until F keeps it");
            println!("for the first fraction F of the steps only.\n\nschedules:");
            for (name, what) in SCHEDULES {
                println!("  {name:<13} {what}");
            }
            Ok(())
        }
    }
}

fn refuse_existing(path: &Path) -> Result<()> {
    if path.exists() {
        bail!(
            "{} already exists; choose another --out (Latent Studio never overwrites images)",
            path.display()
        );
    }
    Ok(())
}

fn generate(g: GenerateArgs) -> Result<()> {
    let dtype = DType::parse(&g.dtype).with_context(|| format!("unknown --dtype '{}' (f32, f16, bf16)", g.dtype))?;
    let device = DeviceKind::parse(&g.device).with_context(|| format!("unknown --device '{}' (cpu, cuda, metal)", g.device))?;
    let prediction = match g.prediction.as_deref() {
        None => None,
        Some("eps" | "epsilon") => Some(Prediction::Epsilon),
        Some("v" | "v_prediction") => Some(Prediction::V),
        Some(other) => bail!("unknown --prediction '{other}' (eps, v)"),
    };
    if let Some(o) = &g.out {
        refuse_existing(o)?;
    }
    if let Some(o) = &g.latents_out {
        refuse_existing(o)?;
    }
    let model = match g.model.clone().or_else(crate::app::embedded_model) {
        Some(m) => m,
        None => bail!("no --model given, and this build has no embedded model yet"),
    };
    if !model.exists() {
        bail!("model {} not found", model.display());
    }
    let loras = g.loras.iter().map(|a| parse_lora_arg(a)).collect::<Result<Vec<_>>>()?;
    for l in &loras {
        if !l.path.is_file() {
            bail!("LoRA {} not found", l.path.display());
        }
    }
    let mut lora_dirs = g.lora_dirs.clone();
    lora_dirs.extend(crate::app::embedded_lora_dir());
    let config = EngineConfig {
        lora_dirs,
        ..EngineConfig::default()
    };
    let engine = EngineHandle::spawn(config, || {})?;
    let vae_tiling =
        VaeTiling::parse(&g.vae_tile).with_context(|| format!("--vae-tile: '{}' is not auto, off or a tile size", g.vae_tile))?;
    engine.load_model(ModelSpec {
        path: model.clone(),
        dtype,
        device,
        prediction,
        vae_tiling,
    })?;
    let info = loop {
        match engine.recv_timeout(Duration::from_secs(3600)) {
            Some(Event::ModelLoaded { info }) => break info,
            Some(Event::Failed { error, .. }) => bail!("{error}"),
            Some(Event::Warning { message, .. }) => eprintln!("warning: {message}"),
            Some(_) => {}
            None => bail!("the engine stopped while loading"),
        }
    };
    eprintln!("model: {} ({})", info.name, info.summary);
    if !loras.is_empty() {
        engine.set_loras(loras)?;
        loop {
            match engine.recv_timeout(Duration::from_secs(3600)) {
                Some(Event::LorasApplied { reports }) => {
                    for r in reports {
                        eprintln!("lora {}", r.summary());
                    }
                    break;
                }
                Some(Event::Failed { error, .. }) => bail!("{error}"),
                Some(Event::Warning { .. }) => {}
                Some(_) => {}
                None => bail!("the engine stopped while applying LoRAs"),
            }
        }
    }
    let seed = g.seed.unwrap_or_else(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
            .unwrap_or(0);
        nanos & 0xffff_ffff
    });
    let request = GenerateRequest {
        prompt: g.prompt.clone(),
        negative: g.negative.clone(),
        width: g.width.unwrap_or(info.default_size.0),
        height: g.height.unwrap_or(info.default_size.1),
        steps: g.steps,
        cfg_scale: g.cfg.unwrap_or(info.default_guidance),
        seed,
        solver: g.solver.clone(),
        schedule: g.schedule.clone(),
        eta: g.eta,
        cfg_rescale: g.cfg_rescale,
        cfg_until: g.cfg_until,
        clip_skip: g.clip_skip,
        preview_every: 0,
        feature_cache: g.feature_cache,
        token_merge: g.token_merge,
    };
    let id = engine.generate(request)?;
    let mut stderr = std::io::stderr();
    loop {
        let Some(ev) = engine.recv_timeout(Duration::from_secs(3600)) else {
            bail!("the engine stopped")
        };
        if ev.job() != Some(id) {
            continue;
        }
        match ev {
            Event::Started { total_steps, nfe, .. } => eprintln!("seed {seed}: {total_steps} steps, {nfe} network evaluations"),
            Event::Progress {
                step,
                total_steps,
                step_time,
                ..
            } => {
                let _ = write!(stderr, "\rstep {step}/{total_steps} ({:.0} ms)", step_time.as_secs_f64() * 1000.0);
                let _ = stderr.flush();
            }
            Event::Finished {
                image,
                metadata,
                timings,
                latents,
                ..
            } => {
                eprintln!();
                let out = g.out.clone().unwrap_or_else(|| next_free_name(Path::new("."), "latent"));
                write_new_file(&out, &encode_png(&image, &metadata)?)?;
                if let (Some(path), Some(lat)) = (&g.latents_out, latents) {
                    write_new_file(path, &latents_safetensors(&lat)?)?;
                }
                eprintln!(
                    "wrote {} ({}x{}) in {:.2} s: text {:.2} s, denoise {:.2} s, VAE {:.2} s, NFE {}{}",
                    out.display(),
                    image.width,
                    image.height,
                    timings.total.as_secs_f64(),
                    timings.text.as_secs_f64(),
                    timings.denoise.as_secs_f64(),
                    timings.vae.as_secs_f64(),
                    timings.nfe,
                    if timings.shallow_nfe > 0 {
                        format!(" ({} shallow: feature cache)", timings.shallow_nfe)
                    } else {
                        String::new()
                    }
                );
                return Ok(());
            }
            Event::Warning { message, .. } => eprintln!("\nwarning: {message}"),
            Event::Cancelled { at_step, .. } => bail!("cancelled at step {at_step}"),
            Event::Failed { error, .. } => {
                eprintln!();
                bail!("{error}")
            }
            _ => {}
        }
    }
}

fn info(path: &Path) -> Result<()> {
    let (cfg, report) = inspect(path)?;
    println!("path:        {}", path.display());
    println!("family:      {}", cfg.family.name());
    println!("prediction:  {:?}", cfg.prediction);
    println!(
        "stored as:   {} ({:.1} MB of tensors)",
        report.stored_dtypes.join(", "),
        report.bytes as f64 / 1e6
    );
    println!("native size: {}x{}", cfg.default_size.0, cfg.default_size.1);
    for (i, t) in cfg.text.iter().enumerate() {
        println!(
            "text {}:      width {}, {} layers, {} heads, {:?}, vocabulary {}, {} positions{}",
            i + 1,
            t.hidden,
            t.layers,
            t.heads,
            t.activation,
            t.vocab,
            t.max_positions,
            t.projection.map(|p| format!(", projection {p}")).unwrap_or_default()
        );
    }
    let u = &cfg.unet;
    println!(
        "unet:        channels {:?}, {} layers/block, attention depth down {:?} mid {:?}, heads {:?}, context {}, {} projection, {} groups{}",
        u.block_out_channels,
        u.layers_per_block,
        u.down_attention,
        u.mid_attention,
        u.heads,
        u.context_dim,
        if u.linear_projection { "linear" } else { "conv" },
        u.groups,
        u.addition
            .map(|(d, n)| format!(", size conditioning {d}x6 (+pooled, {n} in)"))
            .unwrap_or_default()
    );
    let v = &cfg.vae;
    println!(
        "vae:         channels {:?}, {} latent channels, {}x downscale, scaling factor {}",
        v.block_out_channels,
        v.latent_channels,
        v.scale(),
        v.scaling_factor
    );
    for (label, n) in &report.parameters {
        println!("parameters:  {label}: {:.2} M", *n as f64 / 1e6);
    }
    if report.unrecognised.is_empty() {
        println!("unrecognised tensors: none");
    } else {
        println!("unrecognised tensors: {}", report.unrecognised.len());
        for k in report.unrecognised.iter().take(20) {
            println!("  {k}");
        }
        if report.unrecognised.len() > 20 {
            println!("  ... and {} more", report.unrecognised.len() - 20);
        }
    }
    Ok(())
}

fn lora_info(path: &Path) -> Result<()> {
    let f = LoraFile::open(path)?;
    let formats: Vec<String> = f.formats().iter().map(|(fmt, n)| format!("{} ({n} layers)", fmt.name())).collect();
    println!("path:        {}", path.display());
    println!("format:      {}", formats.join(", "));
    println!("made for:    {}", f.target_family());
    let mut by_part: std::collections::BTreeMap<&str, usize> = Default::default();
    for m in f.modules.values() {
        *by_part.entry(m.component()).or_insert(0) += 1;
    }
    let parts: Vec<String> = by_part.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!("layers:      {} ({})", f.modules.len(), parts.join(", "));
    let ranks: std::collections::BTreeSet<usize> = f.modules.values().filter_map(|m| m.rank()).collect();
    let alphas: std::collections::BTreeSet<String> = f.modules.values().filter_map(|m| m.alpha()).map(|a| format!("{a}")).collect();
    println!(
        "rank:        {}",
        ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
    );
    let alpha_text = if alphas.is_empty() {
        f.peft_alpha
            .map_or("not stored (scale 1)".to_string(), |a| format!("{a} (adapter metadata)"))
    } else {
        alphas.into_iter().collect::<Vec<_>>().join(", ")
    };
    println!("alpha:       {alpha_text}");
    println!("tensors:     {} ({} not part of any LoRA layer)", f.tensors, f.stray.len());
    if let Some(m) = f
        .metadata
        .get("ss_sd_model_name")
        .or_else(|| f.metadata.get("ss_base_model_version"))
    {
        println!("trained on:  {m}");
    }
    let words = f.trigger_words(10);
    if !words.is_empty() {
        let w: Vec<String> = words.iter().map(|(t, c)| format!("{t} ({c})")).collect();
        println!("trigger words (training tag counts): {}", w.join(", "));
    }
    println!("short hash:  {}", f.hash);
    Ok(())
}

//! `latent-studio bench ...`: commands that print figures (BENCHMARKS.md records them with
//! the machine and the command). Never timed tests.

mod micro;
mod oracle;
mod presets;
mod solvers;
mod stage;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use latent_engine::protocol::{DType, DeviceKind, VaeTiling};

use stage::Stage;

/// What every timing benchmark takes.
#[derive(clap::Args, Debug, Clone)]
pub struct StageOpts {
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
    /// Also print where the time goes: convolutions, unfold copies, 1x1 convolutions, linear
    /// layers, attention, normalisation and the rest (element-wise work), per iteration.
    #[arg(long)]
    profile: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
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
    /// Preview cost per step: a TAESD-size tiny decoder (random weights, the real layer
    /// sizes) against the latent projection, at an image size.
    Preview {
        #[arg(long, default_value_t = 512)]
        size: usize,
        #[arg(long, default_value_t = 5)]
        iters: usize,
    },
    /// Write a random-weight checkpoint of a preset's architecture (sd15, sd21, sdxl) as a
    /// single .safetensors file, the input of file-level benchmarks (`quantize`, memory of
    /// `bench pipeline` on a file). Never overwrites.
    RandomModel {
        #[arg(long, default_value = "sd15")]
        config: String,
        /// f16, bf16 or f32.
        #[arg(long, default_value = "f16")]
        dtype: String,
        out: PathBuf,
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

/// Runs one `bench` subcommand.
pub fn run(what: BenchCmd) -> Result<()> {
    match what {
        BenchCmd::Oracle { plot, json } => oracle::oracle(plot, json),
        BenchCmd::Attention { device, dtype, iters } => {
            let device = DeviceKind::parse(&device).with_context(|| format!("unknown --device '{device}' (cpu, cuda, metal)"))?;
            let dtype = DType::parse(&dtype).with_context(|| format!("unknown --dtype '{dtype}' (f32, f16, bf16)"))?;
            micro::attention(device, dtype, iters.max(1))
        }
        BenchCmd::Lora { config, rank } => micro::lora(&config, rank),
        BenchCmd::RandomModel { config, dtype, out } => {
            let dtype = DType::parse(&dtype).with_context(|| format!("unknown --dtype '{dtype}' (f32, f16, bf16)"))?;
            micro::random_model(&config, dtype, &out)
        }
        BenchCmd::Preview { size, iters } => micro::preview(size, iters.max(1)),
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
        } => solvers::solvers(solvers::SolversArgs {
            config,
            prompts: if prompts.is_empty() {
                solvers::SOLVER_PROMPTS.iter().map(|p| p.to_string()).collect()
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
        BenchCmd::Text(o) => run_stage(Stage::Text, o),
        BenchCmd::Unet(o) => run_stage(Stage::Unet, o),
        BenchCmd::Vae(o) => run_stage(Stage::Vae, o),
        BenchCmd::Pipeline(o) => run_stage(Stage::Pipeline, o),
    }
}

fn run_stage(stage: Stage, o: StageOpts) -> Result<()> {
    let dtype = DType::parse(&o.dtype).with_context(|| format!("unknown --dtype '{}' (f32, f16, bf16)", o.dtype))?;
    let device = DeviceKind::parse(&o.device).with_context(|| format!("unknown --device '{}' (cpu, cuda, metal)", o.device))?;
    let vae_tiling =
        VaeTiling::parse(&o.vae_tile).with_context(|| format!("--vae-tile: '{}' is not auto, off or a tile size", o.vae_tile))?;
    stage::stage(stage::StageArgs {
        stage,
        config: o.config,
        width: o.width,
        height: o.height,
        batch: o.batch.unwrap_or(if stage == Stage::Unet { 2 } else { 1 }),
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
        profile: o.profile,
    })
}

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
pub(super) fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// Peak resident memory of this process in GiB.
fn peak_rss_gib() -> f64 {
    status_bytes("VmHWM:") as f64 / (1u64 << 30) as f64
}

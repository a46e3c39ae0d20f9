//! The command line: `generate`, `info`, `solvers`, `prompt`, `lora-info`, `bench`, the training
//! commands; no subcommand opens the window. This file holds the argument types and the
//! dispatch; each subcommand family has its own file (the HTTP server's `serve` will too).

mod bench;
mod compare;
mod decode;
mod generate;
mod info;
mod prompt;
mod quantize;
mod serve;
mod train;
mod upscale;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

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
    Generate(Box<generate::GenerateArgs>),
    /// Show what a checkpoint is: family, inferred configuration, dtypes, parameter counts.
    Info {
        /// A .safetensors or .gguf checkpoint or a diffusers folder.
        path: Option<PathBuf>,
        /// Say which CPU kernels (instruction set) and devices this build runs with.
        #[arg(long)]
        device: bool,
    },
    /// List the solvers with their order and cost, and the schedules.
    Solvers,
    /// Decode a latents file (what `generate --latents-out` writes) with the model's VAE,
    /// another VAE (--vae) or a tiny decoder (--tiny), to compare decoders.
    Decode(decode::DecodeArgs),
    /// Enlarge a picture with an ESRGAN-family upscaler (.safetensors), in tiles.
    Upscale(upscale::UpscaleArgs),
    /// Show how a prompt in A1111's syntax is read: its schedule over the steps and each
    /// text's weighted pieces (--json for scripts).
    Prompt(prompt::PromptArgs),
    /// Show what a LoRA file is: format, target family, rank, alpha, tensors, trigger words.
    LoraInfo {
        /// A LoRA .safetensors file.
        path: PathBuf,
    },
    /// Write the embedded model's procedural training set (PNG files + captions.jsonl) into a
    /// new folder, and optionally a contact sheet of the first 64 images.
    MakeDataset(train::MakeDatasetArgs),
    /// Train the embedded default model from scratch on the procedural set: the autoencoder,
    /// then text encoder + UNet. Re-running the same command resumes from DIR's checkpoint.
    Train(Box<train::TrainArgs>),
    /// Train a LoRA on a model (kohya format, for the LoRA panel): on your own pictures
    /// (--images DIR: PNG files, captions from NAME.txt, the PNG's prompt, or the file name)
    /// or on the procedural set redrawn in a style (--style outline).
    TrainLora(train::TrainLoraArgs),
    /// Write a .safetensors checkpoint as GGUF with its UNet quantized (q8_0, q4_K, ...), as
    /// stable-diffusion.cpp and ComfyUI-GGUF read; the studio opens such files directly.
    Quantize(quantize::QuantizeArgs),
    /// Serve AUTOMATIC1111's HTTP API (/sdapi/v1/txt2img, img2img, options, ...) on one
    /// engine, for scripts, plug-ins and other machines.
    Serve(serve::ServeArgs),
    /// The solver lab: solvers at equal cost (NFE budgets) on one prompt and seed, each cell
    /// measured against a long reference run; writes a labelled grid, a CSV, a convergence
    /// plot and every cell's PNG into a new folder.
    Compare(Box<compare::CompareArgs>),
    /// Benchmarks that print figures (see BENCHMARKS.md).
    Bench {
        #[command(subcommand)]
        what: bench::BenchCmd,
    },
}

/// Runs the parsed command line.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        None => crate::gui::run(crate::gui::WindowArgs {
            model: args.model,
            output: args.output,
            renderer: args.renderer,
        }),
        Some(Cmd::Generate(g)) => generate::generate(*g),
        Some(Cmd::Info { path, device }) => {
            if device || path.is_none() {
                info::device();
            }
            match path {
                Some(p) => info::info(&p),
                None => Ok(()),
            }
        }
        Some(Cmd::LoraInfo { path }) => info::lora_info(&path),
        Some(Cmd::Solvers) => info::solvers(),
        Some(Cmd::Prompt(a)) => prompt::prompt(a),
        Some(Cmd::Decode(a)) => decode::decode(a),
        Some(Cmd::Upscale(a)) => upscale::upscale(a),
        Some(Cmd::MakeDataset(a)) => train::make_dataset_cmd(a),
        Some(Cmd::Train(a)) => train::train(*a),
        Some(Cmd::TrainLora(a)) => train::train_lora(a),
        Some(Cmd::Serve(a)) => serve::serve(a),
        Some(Cmd::Compare(a)) => compare::compare(*a),
        Some(Cmd::Quantize(a)) => quantize::quantize(a),
        Some(Cmd::Bench { what }) => bench::run(what),
    }
}

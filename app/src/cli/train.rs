//! The training commands: `make-dataset`, `train` (the embedded model) and `train-lora`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use latent_engine::image_io::{encode_png, write_new_file};

#[derive(clap::Args, Debug)]
pub struct MakeDatasetArgs {
    /// A folder that does not exist yet (or is empty).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 256)]
    pub count: u64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 64)]
    pub size: u32,
    /// Also write an 8x8 grid of the first images here (a new file).
    #[arg(long)]
    pub sheet: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct TrainArgs {
    /// Folder for checkpoint.safetensors, train.log and the exported model.
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 1600)]
    pub vae_steps: u64,
    /// Train the autoencoder on random crops of this size (0: whole images)...
    #[arg(long, default_value_t = 32)]
    pub vae_crop: u32,
    /// ...except for its last this many steps, on whole images.
    #[arg(long, default_value_t = 150)]
    pub vae_full_steps: u64,
    #[arg(long, default_value_t = 1800)]
    pub diffusion_steps: u64,
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    /// Peak learning rate of the text encoder + UNet (50-step warm-up, then cosine to 10%).
    #[arg(long, default_value_t = 5e-4)]
    pub lr: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub data_seed: u64,
    #[arg(long, default_value_t = 100)]
    pub save_every: u64,
    /// Share (0-1) of the denoiser's pictures forced to be large shapes, on top of the
    /// set's own 39%: shape words need more steps than colours and objects.
    #[arg(long, default_value_t = 0.0)]
    pub large_shapes: f32,
    /// Draw shapes on these backgrounds only (comma-separated colour names, e.g.
    /// black,white); objects keep every background. Default: any colour.
    #[arg(long, value_delimiter = ',')]
    pub shape_backgrounds: Vec<String>,
    /// Share (0-1) of the shapes whose caption leaves out the shape's colour ("a star on a
    /// black background").
    #[arg(long, default_value_t = 0.0)]
    pub drop_shape_colour: f32,
    /// Take the autoencoder from this model (e.g. the shipped one) and train only the
    /// text encoder and UNet (a new run only; a checkpoint in --out wins).
    #[arg(long)]
    pub autoencoder_from: Option<PathBuf>,
    /// Also give the UNet the text encoder's pooled output (end token) through
    /// `add_embedding`, as SDXL does: the whole prompt reaches every block at once.
    #[arg(long)]
    pub pooled_text: bool,
    /// Stop (after saving) once this many minutes have passed; resume later.
    #[arg(long)]
    pub minutes: Option<f64>,
    /// Stop (after saving) once the denoiser reaches this step; resume later. Stopping
    /// and resuming at the same steps reproduces a run exactly.
    #[arg(long)]
    pub stop_at: Option<u64>,
}

#[derive(clap::Args, Debug)]
pub struct TrainLoraArgs {
    #[arg(long)]
    pub model: PathBuf,
    /// The LoRA file to write (never an existing file).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long)]
    pub images: Option<PathBuf>,
    #[arg(long, default_value = "outline")]
    pub style: String,
    #[arg(long, default_value_t = 300)]
    pub steps: u64,
    #[arg(long, default_value_t = 8)]
    pub batch: usize,
    #[arg(long, default_value_t = 4)]
    pub rank: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// `train`: the embedded model from scratch (or resumed from `--out`'s checkpoint).
pub fn train(a: TrainArgs) -> Result<()> {
    let TrainArgs {
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
    } = a;
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

/// `train-lora`: a kohya-format LoRA on a model, from pictures or a procedural style.
pub fn train_lora(a: TrainLoraArgs) -> Result<()> {
    let TrainLoraArgs {
        model,
        out,
        images,
        style,
        steps,
        batch,
        rank,
        lr,
        seed,
    } = a;
    use latent_engine::train::lora::{LoraOptions, Style, train_lora};
    let style = Style::parse(&style).with_context(|| format!("unknown --style '{style}' (outline)"))?;
    let images = match images {
        Some(dir) => training_pictures(&dir)?,
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

/// `make-dataset`, from its arguments.
pub fn make_dataset_cmd(a: MakeDatasetArgs) -> Result<()> {
    make_dataset(&a.out, a.count, a.seed, a.size, a.sheet.as_deref())
}

/// `make-dataset`: the procedural set as PNG files with captions (and a contact sheet).
pub fn make_dataset(out: &Path, count: u64, seed: u64, size: u32, sheet: Option<&Path>) -> Result<()> {
    use latent_engine::train::dataset::sample;
    if !(16..=512).contains(&size) {
        bail!("--size must be between 16 and 512");
    }
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty; choose a new folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut captions = String::new();
    let grid = 8u32;
    let mut sheet_px = vec![0u8; (grid * size * grid * size * 3) as usize];
    for i in 0..count {
        let s = sample(seed, i, size);
        let name = format!("{i:06}.png");
        write_new_file(&out.join(&name), &encode_png(&s.image, &s.caption)?)?;
        captions.push_str(&serde_json::json!({"file": name, "caption": s.caption}).to_string());
        captions.push('\n');
        if i < u64::from(grid * grid) {
            let (gx, gy) = ((i as u32 % grid) * size, (i as u32 / grid) * size);
            for y in 0..size {
                let src = (y * size * 3) as usize;
                let dst = (((gy + y) * grid * size + gx) * 3) as usize;
                sheet_px[dst..dst + (size * 3) as usize].copy_from_slice(&s.image.pixels[src..src + (size * 3) as usize]);
            }
        }
    }
    write_new_file(&out.join("captions.jsonl"), captions.as_bytes())?;
    if let Some(path) = sheet {
        let img = latent_engine::ImageRgb8 {
            width: grid * size,
            height: grid * size,
            pixels: sheet_px,
        };
        write_new_file(path, &encode_png(&img, "")?)?;
    }
    println!("wrote {count} images and captions.jsonl to {}", out.display());
    Ok(())
}

/// PNG pictures of a folder with captions: `NAME.txt` beside the picture, else the prompt of
/// its A1111 parameters, else the file name (`red_fox` -> "red fox").
pub fn training_pictures(dir: &Path) -> Result<Vec<(latent_engine::ImageRgb8, String)>> {
    let mut out = vec![];
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| crate::png::is_png(p))
        .collect();
    files.sort();
    for p in files {
        let Ok((image, params)) = crate::png::decode_png(&p) else {
            eprintln!("skipping {} (not a readable PNG)", p.display());
            continue;
        };
        let caption = std::fs::read_to_string(p.with_extension("txt"))
            .ok()
            .map(|s| s.trim().to_string())
            .or_else(|| params.and_then(|t| latent_engine::metadata::Parameters::parse(&t).map(|p| p.prompt)))
            .unwrap_or_else(|| {
                p.file_stem()
                    .map(|s| s.to_string_lossy().replace(['_', '-'], " "))
                    .unwrap_or_default()
            });
        out.push((image, caption));
    }
    if out.is_empty() {
        bail!("{} has no PNG pictures to train on", dir.display());
    }
    Ok(out)
}

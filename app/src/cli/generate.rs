//! `generate`: one image headlessly, through the same engine thread as the window.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use latent_engine::image_io::{encode_png, latents_safetensors, next_free_name, write_new_file};
use latent_engine::protocol::{
    DType, DeviceKind, Event, GenerateRequest, InpaintArea, LoraSpec, MaskedContent, ModelSpec, Prediction, VaeTiling,
};
use latent_engine::{EngineConfig, EngineHandle};

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// Checkpoint: a .safetensors single file or a diffusers folder (default: the embedded
    /// model, when this build has one).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    prompt: String,
    #[arg(long, default_value = "")]
    negative: String,
    /// Image width in pixels (multiple of 8); default: the model's native size.
    #[arg(long, allow_negative_numbers = true, value_parser = pixels)]
    width: Option<u32>,
    /// Image height in pixels (multiple of 8); default: the model's native size.
    #[arg(long, allow_negative_numbers = true, value_parser = pixels)]
    height: Option<u32>,
    #[arg(long, default_value_t = 20, allow_negative_numbers = true, value_parser = steps)]
    steps: u32,
    /// Classifier-free guidance scale (1 disables guidance and halves the cost); default: the
    /// one the model is made for (7 for most, 2 for the embedded model, 1 for Turbo/LCM).
    #[arg(long)]
    cfg: Option<f64>,
    /// Seed of the initial noise (torch CPU generator compatible); random when omitted or -1
    /// (A1111's convention). The seed used is printed and written to the metadata.
    #[arg(long, allow_negative_numbers = true, value_parser = seed)]
    seed: Option<i64>,
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
    /// Spend this many network evaluations (CFG's second pass and the hires pass counted):
    /// the steps are the most the solver can take within it (overrides --steps; printed).
    #[arg(long)]
    nfe: Option<u32>,
    /// Feature cache (DeepCache): the whole UNet every N steps, only its top level between
    /// (1 = off; 3 is a common choice).
    #[arg(long, default_value_t = 1)]
    feature_cache: u32,
    /// Token merging (ToMe for SD): share of the top level's tokens merged away before each
    /// self-attention (0 = off; 0.3-0.5 usual; A1111's "Token merging ratio").
    #[arg(long, default_value_t = 0.0)]
    token_merge: f64,
    /// How (word:1.2) weights act: original (A1111's default), no-norm, comfy, ignore, none
    /// (brackets are plain text).
    #[arg(long, default_value = "original", value_parser = parse_emphasis)]
    emphasis: latent_engine::protocol::Emphasis,
    /// A VAE to decode with instead of the checkpoint's own: an A1111-style .safetensors VAE
    /// file (models/VAE) or a diffusers vae/ folder.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// A whole checkpoint (file or diffusers folder) lending the text encoders and VAE a
    /// UNet-only --model lacks (ComfyUI-GGUF's UNet files, ComfyUI's models/unet).
    #[arg(long, value_name = "CHECKPOINT")]
    components: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: String,
    #[arg(long, default_value = "f32")]
    dtype: String,
    /// Override what the checkpoint says it predicts: eps or v.
    #[arg(long)]
    prediction: Option<String>,
    /// Output PNG (never overwritten; the name must end in .png); default: the next free
    /// `latent-NNNNN.png` here.
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
    /// A folder of textual-inversion embeddings (.safetensors) called by file name in the
    /// prompts. Repeatable; an `embeddings` folder beside the model (or up to two levels
    /// above it) is searched too.
    #[arg(long = "embeddings", value_name = "DIR")]
    embedding_dirs: Vec<PathBuf>,
    /// Image to image: start from this picture (PNG, JPEG, WebP, ...); without --width and
    /// --height the request takes its size (rounded down to the model's latent grid).
    #[arg(long, value_name = "FILE")]
    init_image: Option<PathBuf>,
    /// Image to image: denoising strength, 0..1 (how much of the schedule runs; A1111's
    /// "Denoising strength").
    #[arg(long, default_value_t = 0.75, allow_negative_numbers = true)]
    strength: f64,
    /// Image to image: how an init image of another size is fitted.
    #[arg(long, value_enum, default_value = "just")]
    resize_mode: crate::resize::ResizeMode,
    /// Inpainting: repaint where this picture is white (kept where black); fitted like the
    /// init image. Use `--strength 1` to repaint from pure noise.
    #[arg(long, value_name = "FILE", requires = "init_image")]
    mask: Option<PathBuf>,
    /// Inpainting: blur (pixels) of the mask the result is pasted over the picture with
    /// (A1111's "Mask blur"); outside it the picture's own pixels stay.
    #[arg(long, default_value_t = 4)]
    mask_blur: u32,
    /// Inpainting: `whole` repaints the whole picture at the request's size; `masked` cuts
    /// out the mask's box (plus --padding, grown to the request's aspect ratio), repaints it
    /// at --width x --height (default: the model's size) and pastes it back, so small
    /// repairs get the model's full resolution (A1111's "Only masked").
    #[arg(long, value_enum, default_value = "whole", requires = "mask")]
    inpaint_area: InpaintAreaArg,
    /// Inpainting with `--inpaint-area masked`: pixels kept around the mask's box.
    #[arg(long, default_value_t = 32, requires = "mask")]
    padding: u32,
    /// Inpainting: what the masked region starts from below strength 1: the picture
    /// (`original`), its surrounding colours blurred in (`fill`), fresh noise (`noise`) or
    /// zero latents (`nothing`).
    #[arg(long, value_enum, default_value = "original", requires = "mask")]
    masked_content: MaskedContentArg,
    /// Outpainting: extend the init image by LEFT,TOP,RIGHT,BOTTOM pixels and paint only the
    /// new border (the size grows by as much unless --width/--height are given).
    #[arg(long, value_name = "L,T,R,B", requires = "init_image", conflicts_with = "mask", value_parser = parse_outpaint)]
    outpaint: Option<[u32; 4]>,
    /// Hires fix: upscale the finished latents by this factor (above 1, at most 4) and run a
    /// second, image-to-image pass at that size (A1111's "Hires. fix").
    #[arg(long, value_name = "FACTOR")]
    hires_scale: Option<f64>,
    /// Hires fix: steps of the second pass's schedule (0 = --steps).
    #[arg(long, default_value_t = 0, requires = "hires_scale")]
    hires_steps: u32,
    /// Hires fix: denoising strength of the second pass.
    #[arg(long, default_value_t = 0.7, requires = "hires_scale")]
    hires_strength: f64,
    /// Hires fix: how the first pass is enlarged: latent (bilinear, A1111's "Latent"),
    /// nearest, bicubic (antialiased), lanczos (the decoded picture), or an ESRGAN-family
    /// upscaler .safetensors file.
    #[arg(long, value_name = "NAME|FILE", default_value = "latent", requires = "hires_scale", value_parser = parse_upscaler)]
    hires_upscaler: (latent_engine::protocol::HiresUpscaler, Option<PathBuf>),
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum InpaintAreaArg {
    Whole,
    Masked,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum MaskedContentArg {
    Original,
    Fill,
    Noise,
    Nothing,
}

fn parse_upscaler(s: &str) -> std::result::Result<(latent_engine::protocol::HiresUpscaler, Option<PathBuf>), String> {
    use latent_engine::protocol::HiresUpscaler;
    if let Some(u) = HiresUpscaler::parse(s).filter(|u| *u != HiresUpscaler::Model) {
        return Ok((u, None));
    }
    let path = PathBuf::from(s);
    if path.is_file() {
        return Ok((HiresUpscaler::Model, Some(path)));
    }
    Err(format!(
        "unknown hires upscaler {s:?}: latent, nearest, bicubic, lanczos, or an upscaler .safetensors file that exists"
    ))
}

fn parse_outpaint(s: &str) -> std::result::Result<[u32; 4], String> {
    let v: Vec<u32> = s
        .split(',')
        .map(|p| p.trim().parse::<u32>().map_err(|_| format!("'{p}' is not a pixel count")))
        .collect::<std::result::Result<_, _>>()?;
    match v[..] {
        [l, t, r, b] if l + t + r + b > 0 && v.iter().all(|&x| x <= 4096) => Ok([l, t, r, b]),
        [_, _, _, _] => Err("give at least one side more than 0 pixels (at most 4096 each)".into()),
        _ => Err(format!("'{s}': give four numbers LEFT,TOP,RIGHT,BOTTOM, e.g. 64,0,64,0")),
    }
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

/// `--width`/`--height`: a positive multiple of 8 up to 8192 (the model may ask for more).
fn pixels(text: &str) -> Result<u32, String> {
    match text.trim().parse::<i64>() {
        Ok(v) if v > 0 && v % 8 == 0 && v <= 8192 => Ok(v as u32),
        Ok(v) => Err(format!("{v}: sizes must be positive multiples of 8, at most 8192")),
        Err(_) => Err(format!("'{text}' is not a whole number of pixels")),
    }
}

/// `--steps`: 1 to 1000.
fn steps(text: &str) -> Result<u32, String> {
    match text.trim().parse::<i64>() {
        Ok(v) if (1..=1000).contains(&v) => Ok(v as u32),
        Ok(v) => Err(format!("{v} is not between 1 and 1000")),
        Err(_) => Err(format!("'{text}' is not a whole number of steps")),
    }
}

/// `--seed`: 0 to 2^32-1 as A1111 and ComfyUI write them (larger ones up to 2^63 work too),
/// or -1 for a random one.
fn seed(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(v) if v >= -1 => Ok(v),
        Ok(v) => Err(format!("{v} is not a seed (0 or more, or -1 for a random one)")),
        Err(_) => Err(format!("'{text}' is not a whole number (or -1 for a random seed)")),
    }
}

/// A seed A1111 and ComfyUI both accept (below 2^32), from the clock.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 ^ d.as_secs())
        .unwrap_or(0);
    nanos & 0xffff_ffff
}

/// Checks before any work that `path` (given with `flag`) can be written as a new file: it
/// does not exist, it has the extension the data needs, and its folder exists and takes a
/// new file. One line that names the path and the reason.
pub(super) fn check_output(path: &Path, flag: &str, extension: &str) -> Result<()> {
    if path.exists() {
        bail!(
            "{} already exists; choose another {flag} (Latent Studio never overwrites files)",
            path.display()
        );
    }
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if ext.as_deref() != Some(extension) {
        let what = match extension {
            "png" => "a PNG image (the format that carries the generation parameters)",
            _ => "a safetensors file",
        };
        bail!(
            "cannot write {}: {flag} writes {what}; give a name ending in .{extension}",
            path.display()
        );
    }
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        bail!("cannot write {}: folder {} does not exist", path.display(), dir.display());
    }
    if !dir.is_dir() {
        bail!("cannot write {}: {} is not a folder", path.display(), dir.display());
    }
    let probe = dir.join(format!(".latent-studio-probe-{}", std::process::id()));
    match std::fs::OpenOptions::new().write(true).create_new(true).open(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => bail!(
            "cannot write {}: folder {} does not take new files ({e})",
            path.display(),
            dir.display()
        ),
    }
}

/// Writes the image and its companions (the latents, the init picture and mask kept beside
/// it): all or none (a file that cannot be written takes the ones before it away again).
fn write_outputs(files: &[(&Path, &[u8])]) -> Result<()> {
    for (i, (path, bytes)) in files.iter().enumerate() {
        if let Err(e) = write_new_file(path, bytes) {
            for (p, _) in &files[..i] {
                let _ = std::fs::remove_file(p);
            }
            return Err(e.into());
        }
    }
    Ok(())
}

pub fn generate(g: GenerateArgs) -> Result<()> {
    let dtype = DType::parse(&g.dtype).with_context(|| format!("unknown --dtype '{}' (f32, f16, bf16)", g.dtype))?;
    let device = DeviceKind::parse(&g.device).with_context(|| format!("unknown --device '{}' (cpu, cuda, metal)", g.device))?;
    let prediction = match g.prediction.as_deref() {
        None => None,
        Some("eps" | "epsilon") => Some(Prediction::Epsilon),
        Some("v" | "v_prediction") => Some(Prediction::V),
        Some(other) => bail!("unknown --prediction '{other}' (eps, v)"),
    };
    if let Some(o) = &g.out {
        check_output(o, "--out", "png")?;
        // The init picture and mask are kept beside the image: those names must be free too.
        for (kind, given) in [("init", g.init_image.is_some()), ("mask", g.mask.is_some() || g.outpaint.is_some())] {
            let side = latent_engine::image_io::sidecar(o, kind);
            if given && side.exists() {
                bail!(
                    "{} already exists (it would keep the {kind} picture of --out); choose another --out",
                    side.display()
                );
            }
        }
    }
    if let Some(o) = &g.latents_out {
        check_output(o, "--latents-out", "safetensors")?;
    }
    if g.init_image.is_some() && !(g.strength.is_finite() && (0.0..=1.0).contains(&g.strength)) {
        bail!("--strength must be between 0 and 1, got {}", g.strength);
    }
    let read = |p: &Path, what: &str| -> Result<image::RgbImage> {
        Ok(image::open(p)
            .map_err(|e| anyhow::anyhow!("cannot read the {what} {}: {e}", p.display()))?
            .to_rgb8())
    };
    let mut init = g.init_image.as_deref().map(|p| read(p, "init image")).transpose()?;
    let mut mask = g.mask.as_deref().map(|p| read(p, "mask")).transpose()?;
    if let (Some(sides), Some(img)) = (g.outpaint, init.as_ref()) {
        let (picture, m) = crate::resize::outpaint(img, sides);
        init = Some(picture);
        mask = Some(m);
    }
    let model = match g.model.clone().or_else(crate::assets::embedded_model) {
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
    lora_dirs.extend(crate::assets::embedded_lora_dir());
    for d in &g.embedding_dirs {
        if !d.is_dir() {
            bail!("--embeddings {}: not a folder", d.display());
        }
    }
    let config = EngineConfig {
        lora_dirs,
        embedding_dirs: g.embedding_dirs.clone(),
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
        vae: g.vae.clone(),
        tiny_decoder: None,
        components: g.components.clone(),
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
    let seed = match g.seed {
        Some(s) if s >= 0 => s as u64,
        _ => random_seed(),
    };
    // An init image without --width/--height sets the size (down to the latent grid).
    let grid = 8u32;
    let only_masked = matches!(g.inpaint_area, InpaintAreaArg::Masked) && mask.is_some();
    let (width, height) = match &init {
        // "Only masked" works at the model's size unless told otherwise.
        Some(_) if only_masked => (g.width.unwrap_or(info.default_size.0), g.height.unwrap_or(info.default_size.1)),
        Some(img) => (
            g.width.unwrap_or((img.width() / grid * grid).max(grid)),
            g.height.unwrap_or((img.height() / grid * grid).max(grid)),
        ),
        None => (g.width.unwrap_or(info.default_size.0), g.height.unwrap_or(info.default_size.1)),
    };
    // "Only masked" takes the picture and mask at their own size (the engine cuts the crop);
    // otherwise both are fitted to the request's size.
    let fit = |img: &image::RgbImage| {
        if only_masked {
            crate::resize::fit(img, img.width(), img.height(), g.resize_mode)
        } else {
            crate::resize::fit(img, width, height, g.resize_mode)
        }
    };
    if only_masked
        && let (Some(i), Some(m)) = (&init, &mask)
        && i.dimensions() != m.dimensions()
    {
        bail!(
            "the mask is {}x{}, the init image {}x{}: with --inpaint-area masked they must be the same size",
            m.width(),
            m.height(),
            i.width(),
            i.height()
        );
    }
    let init_image = init.as_ref().map(|img| std::sync::Arc::new(fit(img)));
    let request = GenerateRequest {
        prompt: g.prompt.clone(),
        negative: g.negative.clone(),
        width,
        height,
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
        emphasis: g.emphasis,
        strength: g.strength,
        init_image,
        mask: mask.as_ref().map(|m| std::sync::Arc::new(fit(m))),
        mask_blur: g.mask_blur,
        inpaint_area: if only_masked { InpaintArea::Masked } else { InpaintArea::Whole },
        masked_padding: g.padding,
        masked_content: match g.masked_content {
            MaskedContentArg::Original => MaskedContent::Original,
            MaskedContentArg::Fill => MaskedContent::Fill,
            MaskedContentArg::Noise => MaskedContent::LatentNoise,
            MaskedContentArg::Nothing => MaskedContent::LatentNothing,
        },
        hires: g.hires_scale.map(|scale| latent_engine::protocol::Hires {
            scale,
            steps: g.hires_steps,
            strength: g.hires_strength,
            upscaler: g.hires_upscaler.0,
            model: g.hires_upscaler.1.clone(),
        }),
    };
    let mut request = request;
    if let Some(budget) = g.nfe {
        match latent_engine::pipeline::steps_for_budget(&request, budget) {
            Some(steps) => {
                request.steps = steps;
                eprintln!(
                    "NFE budget {budget}: {steps} steps of {} ({} NFE{})",
                    request.solver,
                    latent_engine::pipeline::request_nfe(&request).unwrap_or(0),
                    if request.cfg_scale != 1.0 {
                        ", CFG's two passes counted"
                    } else {
                        ""
                    }
                );
            }
            None => bail!(
                "--nfe {budget} buys no step of {} (one costs {} network evaluations)",
                request.solver,
                latent_engine::pipeline::request_nfe(&GenerateRequest {
                    steps: 1,
                    ..request.clone()
                })
                .map_or_else(|| "an unknown number of".to_string(), |n| n.to_string())
            ),
        }
    }
    let (sent_init, sent_mask) = (request.init_image.clone(), request.mask.clone());
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
                let png = encode_png(&image, &metadata)?;
                let lat = match (&g.latents_out, latents) {
                    (Some(path), Some(lat)) => Some((path.as_path(), latents_safetensors(&lat)?)),
                    _ => None,
                };
                // The picture (and mask) the image was made from, kept beside it.
                let mut kept: Vec<(PathBuf, Vec<u8>)> = vec![];
                for (kind, img) in [("init", &sent_init), ("mask", &sent_mask)] {
                    if let Some(img) = img {
                        kept.push((
                            latent_engine::image_io::sidecar(&out, kind),
                            encode_png(img, &format!("{kind} of {}", out.display()))?,
                        ));
                    }
                }
                let mut files: Vec<(&Path, &[u8])> = vec![(&out, &png)];
                files.extend(lat.as_ref().map(|(p, b)| (*p, b.as_slice())));
                files.extend(kept.iter().map(|(p, b)| (p.as_path(), b.as_slice())));
                write_outputs(&files)?;
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

fn parse_emphasis(s: &str) -> std::result::Result<latent_engine::protocol::Emphasis, String> {
    latent_engine::protocol::Emphasis::parse(s).ok_or_else(|| format!("unknown emphasis {s:?}: original, no-norm, comfy, ignore or none"))
}

//! `latent-studio decode`: latents -> PNG with the model's VAE, a VAE file or a tiny decoder.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use latent_engine::image_io::{encode_png, write_new_file};
use latent_engine::pipeline::Pipeline;
use latent_engine::protocol::ModelSpec;

#[derive(clap::Args, Debug)]
pub struct DecodeArgs {
    /// The model whose VAE decodes (a .safetensors checkpoint or diffusers folder).
    #[arg(long)]
    pub model: PathBuf,
    /// Decode with this VAE instead (A1111 VAE file or diffusers vae/ folder).
    #[arg(long, conflicts_with = "tiny")]
    pub vae: Option<PathBuf>,
    /// Decode with this tiny decoder (TAESD family: taesd_decoder.safetensors or an
    /// AutoencoderTiny folder).
    #[arg(long)]
    pub tiny: Option<PathBuf>,
    /// A safetensors file with the latents `[1, c, h, w]` (`generate --latents-out`).
    #[arg(long)]
    pub latents: PathBuf,
    /// The PNG to write (a new file).
    #[arg(long)]
    pub out: PathBuf,
}

pub fn decode(a: DecodeArgs) -> Result<()> {
    super::generate::check_output(&a.out, "--out", "png")?;
    let tensors = candle_core::safetensors::load(&a.latents, &candle_core::Device::Cpu)
        .with_context(|| format!("cannot read latents from {}", a.latents.display()))?;
    let latents = match tensors.get("latents") {
        Some(t) => t.clone(),
        None if tensors.len() == 1 => tensors.values().next().cloned().context("latents")?,
        None => bail!("{} holds no tensor named `latents`", a.latents.display()),
    };
    let latents = match latents.rank() {
        3 => latents.unsqueeze(0)?,
        4 => latents,
        _ => bail!(
            "{}: latents of shape {:?}; expected [1, c, h, w]",
            a.latents.display(),
            latents.dims()
        ),
    };
    let pipe = Pipeline::load(&ModelSpec {
        vae: a.vae.clone(),
        tiny_decoder: a.tiny.clone(),
        ..ModelSpec::new(&a.model)
    })?;
    let t0 = std::time::Instant::now();
    let image = pipe.decode_latents(&latents, a.tiny.is_some())?;
    let what = match (&a.vae, &a.tiny) {
        (_, Some(t)) => format!("tiny decoder {}", t.display()),
        (Some(v), _) => format!("VAE {}", v.display()),
        _ => "the model's VAE".to_string(),
    };
    let text = format!("Decoded with {what} from {}", a.latents.display());
    write_new_file(&a.out, &encode_png(&image, &text)?)?;
    eprintln!(
        "{}x{} decoded with {what} in {:.3} s -> {}",
        image.width,
        image.height,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

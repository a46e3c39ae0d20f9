//! `latent-studio upscale`: a picture enlarged by an ESRGAN-family model, in tiles.

use std::path::PathBuf;

use anyhow::Result;
use latent_engine::image_io::{encode_png, write_new_file};
use latent_engine::pipeline::{Quiet, run_upscale};
use latent_engine::protocol::UpscaleRequest;

#[derive(clap::Args, Debug)]
pub struct UpscaleArgs {
    /// The upscaler: an ESRGAN, Real-ESRGAN or 4x-UltraSharp-style .safetensors file (pickle
    /// .pth files are refused: convert them with safetensors' `save_file` first).
    #[arg(long)]
    pub model: PathBuf,
    /// The picture to enlarge.
    pub input: PathBuf,
    /// The PNG to write (a new file).
    #[arg(long)]
    pub out: PathBuf,
    /// Tile size in input pixels (smaller uses less memory).
    #[arg(long, default_value_t = 192, value_parser = clap::value_parser!(u32).range(16..=4096))]
    pub tile: u32,
    /// Overlap of the tiles on every side, in input pixels.
    #[arg(long, default_value_t = 16)]
    pub overlap: u32,
}

pub fn upscale(a: UpscaleArgs) -> Result<()> {
    super::generate::check_output(&a.out, "--out", "png")?;
    let (img, parameters) = crate::png::decode_png(&a.input).map_err(|e| anyhow::anyhow!("cannot read the picture: {e}"))?;
    let request = UpscaleRequest {
        image: std::sync::Arc::new(img),
        model: a.model.clone(),
        parameters: parameters.unwrap_or_default(),
        tile: a.tile,
        overlap: a.overlap,
    };
    let t0 = std::time::Instant::now();
    let out = run_upscale(&request, &candle_core::Device::Cpu, &mut Quiet)?;
    write_new_file(&a.out, &encode_png(&out.image, &out.metadata)?)?;
    let name = a.model.file_name().and_then(|n| n.to_str()).unwrap_or("upscaler");
    eprintln!(
        "{}x{} -> {}x{} with {name} in {:.2} s -> {}",
        request.image.width,
        request.image.height,
        out.image.width,
        out.image.height,
        t0.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}

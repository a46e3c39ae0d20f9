//! `quantize`: a .safetensors checkpoint written as GGUF with its UNet quantized (the file
//! stable-diffusion.cpp and ComfyUI-GGUF users share; the studio opens it like any checkpoint).

use std::path::PathBuf;

use anyhow::{Result, bail};
use latent_engine::checkpoint::gguf;

#[derive(clap::Args, Debug)]
pub struct QuantizeArgs {
    /// The UNet's type: q8_0, q5_0, q5_1, q4_0, q4_1, q6_K, q5_K, q4_K, q3_K, q2_K, f16, bf16.
    #[arg(long = "type")]
    kind: String,
    /// Tensors whose name contains one of these stay f16 too (comma-separated), besides the
    /// norms, biases, embeddings, first and last convolutions, text encoders and VAE.
    #[arg(long, value_delimiter = ',')]
    keep: Vec<String>,
    /// Quantize the convolution kernels too, flattened to rows of 256 with their shapes
    /// recorded as ComfyUI-GGUF's converter does (the UNet shrinks about twice as much again;
    /// ComfyUI-GGUF and the studio read these files, stable-diffusion.cpp does not).
    #[arg(long)]
    flatten_convs: bool,
    /// A single-file .safetensors checkpoint.
    input: PathBuf,
    /// The GGUF file to write (must not exist).
    output: PathBuf,
}

pub fn quantize(a: QuantizeArgs) -> Result<()> {
    let Some(t) = gguf::parse_type(&a.kind) else {
        bail!(
            "--type {:?} is not one of q8_0, q5_0, q5_1, q4_0, q4_1, q6_K, q5_K, q4_K, q3_K, q2_K, f16, bf16, f32",
            a.kind
        );
    };
    let start = std::time::Instant::now();
    let r = gguf::quantize_file(
        &a.input,
        &a.output,
        t,
        &a.keep,
        if a.flatten_convs {
            gguf::ConvLayout::Flattened
        } else {
            gguf::ConvLayout::Kept
        },
    )?;
    println!(
        "wrote {}: {} tensors, {} of them {}; {:.1} MB -> {:.1} MB ({:.0}%) in {:.1} s",
        a.output.display(),
        r.tensors,
        r.quantized,
        gguf::type_name(t),
        r.bytes_in as f64 / 1e6,
        r.bytes_out as f64 / 1e6,
        100.0 * r.bytes_out as f64 / r.bytes_in.max(1) as f64,
        start.elapsed().as_secs_f64()
    );
    if !r.ldm_names {
        eprintln!(
            "note: {} names its tensors diffusers-style (unet.*), not as an original checkpoint \
             (model.diffusion_model.*): the studio reads the GGUF, stable-diffusion.cpp does not",
            a.input.display()
        );
    } else if a.flatten_convs {
        eprintln!("note: flattened convolutions: ComfyUI-GGUF and the studio read this file, stable-diffusion.cpp does not");
    }
    Ok(())
}

//! Inpainting with ordinary (4-channel) checkpoints, as diffusers'
//! `StableDiffusionInpaintPipeline` does for them: the whole latent is denoised, and after
//! every step the region to keep is put back from the init image's latents, noised to the
//! level the sample is at (clean after the last step).

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::guided::{Blend, Start};
use super::masked_area::mask_bits;
use super::{Job, Pipeline};
use crate::error::Result;
use crate::protocol::{ImageRgb8, MaskedContent};
use crate::rng::TorchRng;
use crate::sampling::schedule::RunSchedule;

/// A1111's overlay: the result pasted over the picture through the mask, binarized, blurred
/// (cv2's `GaussianBlur` with its kernel size `2 * int(2.5 * blur + 0.5) + 1`, reflected
/// borders) and doubled (`clip(mask * 2)`), so the picture's own pixels stay outside it.
pub fn overlay(result: &ImageRgb8, picture: &ImageRgb8, mask: &ImageRgb8, blur: u32) -> ImageRgb8 {
    let m = super::masked_area::blurred_mask(mask, blur);
    let pixels = result
        .pixels
        .chunks_exact(3)
        .zip(picture.pixels.chunks_exact(3))
        .zip(&m)
        .flat_map(|((r, p), &mv)| {
            let a = (mv * 2.0).min(255.0) / 255.0;
            [0, 1, 2].map(|c| (f32::from(p[c]) * (1.0 - a) + f32::from(r[c]) * a).round() as u8)
        })
        .collect();
    ImageRgb8 {
        width: result.width,
        height: result.height,
        pixels,
    }
}

impl Pipeline {
    /// The start of an inpainting run, drawing from the seed's generator in diffusers'
    /// order: the picture's VAE posterior (always for 4-channel models, which blend it back;
    /// below strength 1 for inpainting models), the noise, the masked picture's posterior (an
    /// inpainting model's input; for 4-channel models diffusers draws it too). The sample is
    /// pure noise at strength 1, else the picture's latents noised to where the strength
    /// starts.
    pub(super) fn inpaint_start(
        &self,
        job: &Job,
        image: &ImageRgb8,
        mask: &Arc<ImageRgb8>,
        run: RunSchedule,
        rng: &mut TorchRng,
    ) -> Result<Start> {
        let r = &job.request;
        let nine = self.config.unet.in_channels != self.config.vae.latent_channels;
        let (h, w) = job.latent_size;
        let c = self.config.vae.latent_channels;
        let bits = mask_bits(mask);
        // "fill": the hole painted with the colours around it before the picture is encoded.
        let filled;
        let source = if r.masked_content == MaskedContent::Fill {
            filled = super::masked_area::fill(image, &bits);
            &filled
        } else {
            image
        };
        let latents = if !nine || r.strength < 1.0 {
            Some(self.init_latents(source, rng)?)
        } else {
            None
        };
        let noise = Tensor::from_vec(rng.randn_f32(c * h * w), (1, c, h, w), &self.device)?;
        let masked = if nine {
            Some(self.encode_pixels(&super::masked_area::pixels_of(image, Some(&bits)), Some(rng))?)
        } else {
            let _ = rng.randn_f32(c * h * w);
            None
        };
        // The binarized mask at latent resolution, nearest pixel (torch's `interpolate`).
        let (mw, mh) = (mask.width as usize, mask.height as usize);
        let mut m = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (y * mh / h, x * mw / w);
                m[y * w + x] = if bits[sy * mw + sx] { 1.0 } else { 0.0 };
            }
        }
        let mask = Tensor::from_vec(m, (1, 1, h, w), &self.device)?.to_dtype(DType::F32)?;
        let t_start = (r.steps - super::job::run_steps(r)) as usize;
        let x = match &latents {
            Some(l) if r.strength < 1.0 => {
                // "latent noise" / "latent nothing": the start under the mask replaced by
                // fresh noise (the generator's next draw) or zeros, before it is noised.
                let keep = (1.0 - &mask)?;
                let l = match r.masked_content {
                    MaskedContent::LatentNoise => {
                        let fresh = Tensor::from_vec(rng.randn_f32(c * h * w), (1, c, h, w), &self.device)?;
                        (l.broadcast_mul(&keep)? + fresh.broadcast_mul(&mask)?)?
                    }
                    MaskedContent::LatentNothing => l.broadcast_mul(&keep)?,
                    MaskedContent::Original | MaskedContent::Fill => l.clone(),
                };
                (l + (&noise * run.sigmas[t_start])?)?
            }
            _ => (&noise * run.init_noise_sigma)?,
        };
        let run = RunSchedule {
            sigmas: run.sigmas[t_start..].to_vec(),
            timesteps: run.timesteps[t_start..].to_vec(),
            init_noise_sigma: run.init_noise_sigma,
        };
        let (blend, extra) = match (masked, latents) {
            (Some(masked), _) => (None, Some(Tensor::cat(&[&mask, &masked], 1)?)),
            (None, Some(image)) => (
                Some(Blend {
                    image,
                    noise,
                    mask,
                    sigmas: run.sigmas.clone(),
                }),
                None,
            ),
            (None, None) => (None, None),
        };
        Ok(Start { x, run, blend, extra })
    }
}

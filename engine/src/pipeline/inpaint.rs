//! Inpainting with ordinary (4-channel) checkpoints, as diffusers'
//! `StableDiffusionInpaintPipeline` does for them: the whole latent is denoised, and after
//! every step the region to keep is put back from the init image's latents, noised to the
//! level the sample is at (clean after the last step).

use std::sync::Arc;

use candle_core::{DType, Tensor};

use super::{Job, Pipeline};
use crate::error::Result;
use crate::protocol::ImageRgb8;
use crate::rng::TorchRng;
use crate::sampling::denoiser;
use crate::sampling::schedule::RunSchedule;

/// The mask's pixels to repaint: PIL's `convert("L")` luminance at one half or above
/// (diffusers' `do_binarize`).
pub(super) fn mask_bits(m: &ImageRgb8) -> Vec<bool> {
    m.pixels
        .chunks_exact(3)
        .map(|p| {
            let l = (u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16;
            l >= 128
        })
        .collect()
}

/// What the sampling loop blends back after each step.
pub(super) struct Blend {
    /// The init image's latents (UNet space) and the noise they are noised with.
    image: Tensor,
    noise: Tensor,
    /// `[1, 1, h, w]`: 1 where the model repaints, 0 where the image is kept.
    mask: Tensor,
    sigmas: Vec<f64>,
}

impl Blend {
    /// The sample after step `step` (1-based) with the kept region put back: noised to
    /// `sigmas[step]`, or clean after the last step (in the solver's scaling).
    pub(super) fn apply(&self, step: usize, x: &Tensor) -> Result<Tensor> {
        let n = self.sigmas.len() - 1;
        let keep = if step < n {
            (&self.image + (&self.noise * self.sigmas[step])?)?
        } else {
            (&self.image / denoiser::c_in(self.sigmas[n]))?
        };
        let keep_mask = (1.0 - &self.mask)?;
        Ok((keep.broadcast_mul(&keep_mask)? + x.broadcast_mul(&self.mask)?)?)
    }
}

impl Pipeline {
    /// The start of an inpainting run: the init image's latents sampled from its VAE
    /// posterior, then the noise, then (as diffusers encodes the masked image for
    /// 9-channel models even when it does not use it) a third draw of the generator; the
    /// sample is pure noise at strength 1, else the image latents noised to where the
    /// strength starts.
    pub(super) fn inpaint_start(
        &self,
        job: &Job,
        image: &ImageRgb8,
        mask: &Arc<ImageRgb8>,
        run: RunSchedule,
        rng: &mut TorchRng,
    ) -> Result<(Tensor, RunSchedule, Blend)> {
        let r = &job.request;
        let latents = self.init_latents(image, rng)?;
        let n = latents.elem_count();
        let noise = Tensor::from_vec(rng.randn_f32(n), latents.shape(), &self.device)?;
        let _masked_image_posterior = rng.randn_f32(n);
        let t_start = (r.steps - super::job::run_steps(r)) as usize;
        let x = if r.strength >= 1.0 {
            (&noise * run.init_noise_sigma)?
        } else {
            (&latents + (&noise * run.sigmas[t_start])?)?
        };
        let run = RunSchedule {
            sigmas: run.sigmas[t_start..].to_vec(),
            timesteps: run.timesteps[t_start..].to_vec(),
            init_noise_sigma: run.init_noise_sigma,
        };
        // The binarized mask at latent resolution, nearest pixel (torch's `interpolate`).
        let (_, _, h, w) = latents.dims4()?;
        let bits = mask_bits(mask);
        let (mw, mh) = (mask.width as usize, mask.height as usize);
        let mut m = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                let (sy, sx) = (y * mh / h, x * mw / w);
                m[y * w + x] = if bits[sy * mw + sx] { 1.0 } else { 0.0 };
            }
        }
        let mask = Tensor::from_vec(m, (1, 1, h, w), &self.device)?.to_dtype(DType::F32)?;
        let blend = Blend {
            image: latents,
            noise,
            mask,
            sigmas: run.sigmas.clone(),
        };
        Ok((x, run, blend))
    }
}

//! Text to image (pure noise at the schedule's first sigma) and image to image (the init
//! image's latents noised to the sigma its strength starts at), sampled to the end, decoded.

use std::sync::Arc;
use std::time::Instant;

use candle_core::Tensor;

use super::job::uses_cfg;
use super::{Hooks, Job, Output, Pipeline};
use crate::error::EngineError;
use crate::error::Result;
use crate::nets::config::Family;
use crate::nets::vae::VaeEncoder;
use crate::protocol::{ImageRgb8, InpaintArea, LatentsOut, Timings};
use crate::rng::TorchRng;
use crate::sampling;
use crate::sampling::schedule::RunSchedule;
use candle_core::DType;

impl Pipeline {
    /// Runs one job to the end (or to cancellation / failure).
    pub fn generate(&self, job: &Job, hooks: &mut dyn Hooks) -> Result<Output> {
        match (&job.request.init_image, &job.request.mask) {
            (Some(picture), Some(mask)) if job.request.inpaint_area == InpaintArea::Masked => {
                self.generate_masked_area(job, picture, mask, hooks)
            }
            _ => self.generate_whole(job, hooks),
        }
    }

    /// "Only masked": the mask's neighbourhood cut out and enlarged to the request's size,
    /// inpainted there, shrunk back and pasted into the picture through the blurred mask.
    fn generate_masked_area(&self, job: &Job, picture: &ImageRgb8, mask: &ImageRgb8, hooks: &mut dyn Hooks) -> Result<Output> {
        let r = &job.request;
        let region = super::masked_area::region_of_mask(mask, r.mask_blur, r.masked_padding, r.width, r.height)
            .ok_or_else(|| EngineError::InvalidRequest("the mask is empty: paint (white) where the picture should change".into()))?;
        let mut inner = job.clone();
        inner.request.init_image = Some(Arc::new(super::masked_area::crop_resize(picture, region, r.width, r.height)));
        inner.request.mask = Some(Arc::new(super::masked_area::crop_resize(mask, region, r.width, r.height)));
        let mut out = self.generate_whole(&inner, hooks)?;
        let pasted = super::masked_area::paste_back(&out.image, picture, region);
        out.image = super::inpaint::overlay(&pasted, picture, mask, r.mask_blur);
        Ok(out)
    }

    /// Runs one job at the request's size.
    fn generate_whole(&self, job: &Job, hooks: &mut dyn Hooks) -> Result<Output> {
        let t0 = Instant::now();
        let r = &job.request;
        let cond = self.encode(&super::TextInput {
            prompt: &r.prompt,
            negative: &r.negative,
            clip_skip: r.clip_skip,
            with_uncond: uses_cfg(r.cfg_scale),
            steps: r.steps,
            emphasis: r.emphasis,
        })?;
        // On a GPU the work is queued: each stage's time ends when the device has done it.
        self.device.synchronize()?;
        let t_text = t0.elapsed();

        let steps = r.steps as usize;
        let run = sampling::run_schedule(job.solver, job.schedule, &self.schedule, steps, self.config.family == Family::Sdxl);
        let mut rng = TorchRng::new(r.seed);
        let (x, run, blend, start_extra) = match (&r.init_image, &r.mask) {
            (None, _) => {
                let (h, w) = job.latent_size;
                let c = self.config.vae.latent_channels;
                let noise = rng.randn_f32(c * h * w);
                let noise = Tensor::from_vec(noise, (1, c, h, w), &self.device)?;
                ((noise * run.init_noise_sigma)?, run, None, None)
            }
            (Some(image), None) => {
                let (x, run) = self.img2img_start(job, image, run, &mut rng)?;
                (x, run, None, None)
            }
            (Some(image), Some(mask)) => {
                let s = self.inpaint_start(job, image, mask, run, &mut rng)?;
                (s.x, s.run, s.blend, s.extra)
            }
        };

        let t_loop = Instant::now();
        let extra = match start_extra {
            Some(e) => Some(e),
            None => self.unmasked_extra(job.latent_size)?,
        };
        let mut s = self.sample(job, &cond, super::guided::Start { x, run, blend, extra }, &mut rng, hooks)?;
        if let Some(hires) = &r.hires {
            // Hires fix: the latents enlarged, then an image-to-image pass at the new size
            // from the next noise of the same generator.
            let grid = self.config.vae.scale() as u32;
            let (w2, h2) = super::job::hires_size(r, grid);
            let (lh, lw) = ((h2 / grid) as usize, (w2 / grid) as usize);
            let z = if hires.upscaler.in_pixels() {
                // The first pass decoded, enlarged as a picture, encoded again (its latent
                // sample drawn from the generator, as image to image).
                let (_, small) = self.decode(&s.latents)?;
                let big = self.upscale_picture(&small, w2, h2, hires)?;
                self.init_latents(&big, &mut rng)?
            } else {
                super::hires::upscale(&s.latents, lh, lw, hires.upscaler)?
            };
            let total = if hires.steps == 0 { r.steps } else { hires.steps } as usize;
            let run_n = super::job::hires_run_steps(r) as usize;
            let full = sampling::run_schedule(job.solver, job.schedule, &self.schedule, total, self.config.family == Family::Sdxl);
            let t_start = total - run_n;
            let run2 = RunSchedule {
                sigmas: full.sigmas[t_start..].to_vec(),
                timesteps: full.timesteps[t_start..].to_vec(),
                init_noise_sigma: full.init_noise_sigma,
            };
            let noise = Tensor::from_vec(rng.randn_f32(z.elem_count()), z.shape(), &self.device)?;
            let x2 = (&z + (noise * run2.sigmas[0])?)?;
            let mut r2 = super::job::hires_request(r).ok_or_else(|| EngineError::Other("hires request".into()))?;
            (r2.width, r2.height) = (w2, h2);
            let job2 = Job {
                request: r2,
                latent_size: (lh, lw),
                ..job.clone()
            };
            let extra = self.unmasked_extra(job2.latent_size)?;
            let s2 = self.sample(
                &job2,
                &cond,
                super::guided::Start {
                    x: x2,
                    run: run2,
                    blend: None,
                    extra,
                },
                &mut rng,
                hooks,
            )?;
            s = super::guided::Sampled {
                latents: s2.latents,
                nfe: s.nfe + s2.nfe,
                shallow_nfe: s.shallow_nfe + s2.shallow_nfe,
                preview_time: s.preview_time + s2.preview_time,
            };
        }
        let t_denoise = t_loop.elapsed().saturating_sub(s.preview_time);

        let t_vae0 = Instant::now();
        let (flat, mut image) = self.decode(&s.latents)?;
        // (An "Only masked" job's overlay is made on the whole picture, once pasted back.)
        if let (Some(picture), Some(mask), InpaintArea::Whole) = (&r.init_image, &r.mask, r.inpaint_area) {
            image = super::inpaint::overlay(&image, picture, mask, r.mask_blur);
        }
        let t_vae = t_vae0.elapsed();

        let timings = Timings {
            text: t_text,
            denoise: t_denoise,
            vae: t_vae,
            previews: s.preview_time,
            total: t0.elapsed(),
            nfe: s.nfe,
            shallow_nfe: s.shallow_nfe,
        };
        Ok(Output {
            image,
            latents: LatentsOut {
                shape: s.latents.dims().to_vec(),
                data: flat,
            },
            metadata: {
                let mut p = self.parameters(job, s.nfe);
                if !cond.embeddings.is_empty() {
                    let list: Vec<String> = cond.embeddings.iter().map(|(n, h)| format!("{n}: {h}")).collect();
                    p.push("TI hashes", list.join(", "));
                }
                p.to_text()
            },
            timings,
        })
    }
}

impl Pipeline {
    /// Image to image as diffusers' `StableDiffusionImg2ImgPipeline`: the last
    /// `int(steps * strength)` steps of the schedule; the init image encoded and its latent
    /// posterior sampled with the seed's generator, then the noise drawn from the same
    /// generator and added at the first of those steps (`x = latents + sigma * noise`).
    fn img2img_start(&self, job: &Job, image: &ImageRgb8, run: RunSchedule, rng: &mut TorchRng) -> Result<(Tensor, RunSchedule)> {
        let r = &job.request;
        let total = r.steps as usize;
        let t_start = total - super::job::run_steps(r) as usize;
        let latents = self.init_latents(image, rng)?;
        let n = latents.elem_count();
        let noise = Tensor::from_vec(rng.randn_f32(n), latents.shape(), &self.device)?;
        let sigma = run.sigmas[t_start];
        let x = (latents + (noise * sigma)?)?;
        let sliced = RunSchedule {
            sigmas: run.sigmas[t_start..].to_vec(),
            timesteps: run.timesteps[t_start..].to_vec(),
            init_noise_sigma: run.init_noise_sigma,
        };
        Ok((x, sliced))
    }

    /// The init image's latents (UNet space): encoded by the VAE, its posterior sampled with
    /// the seed's generator (diffusers' `retrieve_latents(..., generator)`), scaled.
    pub(super) fn init_latents(&self, image: &ImageRgb8, rng: &mut TorchRng) -> Result<Tensor> {
        self.encode_pixels(&super::masked_area::pixels_of(image, None), Some(rng))
    }

    /// VAE latents (UNet space) of pixels in [-1, 1] `[3 * h * w]` planar: the posterior
    /// sampled with `rng` (diffusers' `retrieve_latents(..., generator)`), or its mean.
    pub(super) fn encode_pixels(&self, planar: &(Vec<f32>, usize, usize), rng: Option<&mut TorchRng>) -> Result<Tensor> {
        let encoder = VaeEncoder::new(&self.base, &self.config.vae).map_err(|e| {
            EngineError::InvalidRequest(format!("this model's VAE has no usable encoder, which image to image needs ({e})"))
        })?;
        let (data, w, h) = planar;
        let dtype = self.base.get("vae.encoder.conv_in.weight")?.dtype();
        let pixels = Tensor::from_vec(data.clone(), (1, 3, *h, *w), &self.device)?.to_dtype(dtype)?;
        let (mean, logvar) = encoder.encode_with(&pixels, self.config.vae.scale(), self.vae_tiling, super::decode_budget())?;
        let (mean, logvar) = (mean.to_dtype(DType::F32)?, logvar.to_dtype(DType::F32)?.clamp(-30f32, 20f32)?);
        let z = match rng {
            Some(rng) => {
                let eps = Tensor::from_vec(rng.randn_f32(mean.elem_count()), mean.shape(), &self.device)?;
                (mean + (logvar * 0.5)?.exp()?.mul(&eps)?)?
            }
            None => mean,
        };
        Ok((z * self.config.vae.scaling_factor)?)
    }

    /// An inpainting model's extra input without a mask (text or image to image on such a
    /// model, as A1111 does): everything to repaint, over a mid-grey picture's latents.
    pub(super) fn unmasked_extra(&self, latent_size: (usize, usize)) -> Result<Option<Tensor>> {
        if self.config.unet.in_channels == self.config.vae.latent_channels {
            return Ok(None);
        }
        let (h, w) = latent_size;
        let scale = self.config.vae.scale();
        let grey = (vec![0f32; 3 * h * scale * w * scale], w * scale, h * scale);
        let z = self.encode_pixels(&grey, None)?;
        let ones = Tensor::ones((1, 1, h, w), DType::F32, &self.device)?;
        Ok(Some(Tensor::cat(&[&ones, &z], 1)?))
    }
}

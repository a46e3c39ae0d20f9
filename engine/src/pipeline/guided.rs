//! The denoiser of one job: classifier-free guidance around the UNet (with guidance rescale,
//! CFG truncation and the feature cache), and the per-step hook (progress, previews); and
//! [`Pipeline::sample`], the one sampling loop every task runs through it.

use std::time::{Duration, Instant};

use candle_core::{DType as CDType, Tensor};

use super::job::{guided_steps, uses_cfg};
use super::text::Conditioning;
use super::{Hooks, Job, Pipeline};
use crate::error::{EngineError, Result};
use crate::nets::unet::{DeepCache, UnetInput};
use crate::rng::TorchRng;
use crate::sampling;
use crate::sampling::denoiser::{self, Denoise};
use crate::sampling::schedule::RunSchedule;

/// Guidance rescale (Lin et al. 2023): match the guided prediction's standard deviation to
/// the conditional one's, mixed in by `phi`.
fn rescale_cfg(guided: &Tensor, cond: &Tensor, phi: f64) -> Result<Tensor> {
    let std = |t: &Tensor| -> Result<f64> {
        let v: Vec<f32> = t.flatten_all()?.to_dtype(CDType::F32)?.to_vec1()?;
        let n = v.len() as f64;
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / n;
        Ok((v.iter().map(|x| (*x as f64 - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0)).sqrt())
    };
    let (s_cond, s_guided) = (std(cond)?, std(guided)?);
    if s_guided == 0.0 {
        return Ok(guided.clone());
    }
    let factor = phi * s_cond / s_guided + (1.0 - phi);
    Ok((guided * factor)?)
}

/// The denoiser of one job: CFG around the UNet, plus the per-step hook.
struct Guided<'a> {
    pipe: &'a Pipeline,
    cond: &'a Conditioning,
    added: Option<&'a Tensor>,
    run: &'a RunSchedule,
    scale: f64,
    rescale: f64,
    /// Steps (from 0) that run the unconditional pass.
    guided_steps: u32,
    guided: bool,
    hooks: &'a mut dyn Hooks,
    /// Inpainting: the region to keep, put back after every step.
    blend: Option<&'a Blend>,
    /// An inpainting model's extra UNet input `[1, 1 + latent, h, w]`.
    extra: Option<&'a Tensor>,
    /// Denoiser calls so far: what the prompt's schedule counts (A1111's `CFGDenoiser.step`).
    calls: u32,
    nfe: u32,
    step: u32,
    total: u32,
    last_step: Instant,
    preview_time: Duration,
    /// The feature cache's refresh interval in steps (1: off).
    cache_every: u32,
    /// Its deep features and the step they were computed at.
    cache: Option<Tensor>,
    refreshed_at: Option<u32>,
    /// Evaluations (batch rows) that ran the top level only.
    shallow_nfe: u32,
    /// Token merging ratio of the top level's self-attention (0 = off).
    token_merge: f64,
}

impl Guided<'_> {
    fn lookup_timestep(&self, sigma: f64) -> f64 {
        // The listed sigmas map to the scheduler's exact timesteps (diffusers parity); any
        // other sigma (solvers that evaluate between steps) is mapped by interpolation.
        self.run
            .sigmas
            .iter()
            .zip(&self.run.timesteps)
            .find(|(s, _)| (**s - sigma).abs() <= 1e-12 * s.abs().max(1.0))
            .map(|(_, t)| *t)
            .unwrap_or_else(|| self.pipe.schedule.t_for_sigma(sigma))
    }
}

impl Denoise for Guided<'_> {
    fn x0(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        if self.hooks.cancelled() {
            return Err(EngineError::Cancelled { at_step: self.step });
        }
        let t = self.lookup_timestep(sigma);
        let x_in = (x * denoiser::c_in(sigma))?;
        // An inpainting UNet's extra input channels (mask, masked image latents), unscaled.
        let x_in = match self.extra {
            Some(e) => Tensor::cat(&[&x_in, &e.to_dtype(x_in.dtype())?], 1)?,
            None => x_in,
        };
        // CFG truncation: after the chosen fraction of steps only the conditional pass runs.
        let guided = self.guided && self.step < self.guided_steps;
        let b = if guided { 2 } else { 1 };
        let batch = if guided { Tensor::cat(&[&x_in, &x_in], 0)? } else { x_in };
        let timesteps = vec![t; b];
        // Row 1 of the conditioning batch is the prompt, row 0 the negative prompt.
        let cond = self.cond.at_call(self.calls);
        self.calls += 1;
        let (context, pooled, ids) = if guided || !self.guided {
            (cond.context.clone(), cond.pooled.clone(), self.added.cloned())
        } else {
            (
                cond.context.narrow(0, 1, 1)?,
                cond.pooled.as_ref().map(|p| p.narrow(0, 1, 1)).transpose()?,
                self.added.map(|a| a.narrow(0, 1, 1)).transpose()?,
            )
        };
        let added = match (ids.as_ref(), pooled.as_ref()) {
            (Some(ids), Some(p)) => Some((p, ids)),
            _ => None,
        };
        let input = UnetInput {
            sample: &batch,
            timesteps: &timesteps,
            context: &context,
            added,
            token_merge: self.token_merge,
        };
        let out = if self.cache_every <= 1 {
            self.pipe.unet.forward(&input)?
        } else {
            // Whole network at the first evaluation of every `cache_every`-th step (and of
            // step 0); the other evaluations reuse its deep features. After CFG truncation
            // the prompt's row of them is kept.
            if let Some(c) = &self.cache
                && c.dim(0)? != b
            {
                self.cache = Some(c.narrow(0, c.dim(0)? - b, b)?);
            }
            let refresh = self.cache.is_none() || (self.step.is_multiple_of(self.cache_every) && self.refreshed_at != Some(self.step));
            match (&self.cache, refresh) {
                (Some(deep), false) => {
                    self.shallow_nfe += b as u32;
                    self.pipe.unet.forward_cached(&input, DeepCache::Reuse(deep))?
                }
                _ => {
                    self.refreshed_at = Some(self.step);
                    self.pipe.unet.forward_cached(&input, DeepCache::Refresh(&mut self.cache))?
                }
            }
        };
        self.nfe += b as u32;
        let out = if guided {
            let (uncond, cond) = (out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?);
            let g = denoiser::cfg(&uncond, &cond, self.scale)?;
            if self.rescale > 0.0 {
                rescale_cfg(&g, &cond, self.rescale)?
            } else {
                g
            }
        } else {
            out
        };
        denoiser::prediction_to_x0(self.pipe.config.prediction, x, &out, sigma)
    }

    fn timestep(&self, sigma: f64) -> f64 {
        self.lookup_timestep(sigma)
    }

    fn sigma_for_timestep(&self, t: f64) -> f64 {
        self.pipe.schedule.sigma_at(t)
    }

    fn step_done(&mut self, step: usize, x: &Tensor, x0: &Tensor) -> Result<Option<Tensor>> {
        self.step = step as u32;
        self.pipe.device.synchronize()?;
        let now = Instant::now();
        let dt = now - self.last_step;
        self.hooks.progress(self.step, self.total, dt);
        if self.hooks.wants_preview(self.step) {
            let p0 = Instant::now();
            let img = self.pipe.preview_image(x0)?;
            self.hooks.preview(self.step, img);
            self.preview_time += p0.elapsed();
        }
        self.last_step = Instant::now();
        self.blend.map(|b| b.apply(step, x)).transpose()
    }
}

/// Where a sampling run starts: the sample at the first sigma of `run`, and for inpainting
/// what is blended back after each step.
pub(super) struct Start {
    pub(super) x: Tensor,
    pub(super) run: RunSchedule,
    pub(super) blend: Option<Blend>,
    /// An inpainting model's mask and masked-image latents, concatenated to the UNet input.
    pub(super) extra: Option<Tensor>,
}

/// What a sampling run produced and spent.
pub(super) struct Sampled {
    /// Final latents, unscaled (what the VAE decodes after dividing by its scaling factor).
    pub(super) latents: Tensor,
    pub(super) nfe: u32,
    pub(super) shallow_nfe: u32,
    pub(super) preview_time: Duration,
}

impl Pipeline {
    /// Runs the job's solver from `x` (already at the first sigma of `run`) through the
    /// guided denoiser to the end of the schedule. Tasks differ only in where `x` and `run`
    /// start; the guidance, the cost accounting and the hooks are the same for all.
    pub(super) fn sample(
        &self,
        job: &Job,
        cond: &Conditioning,
        start: Start,
        rng: &mut TorchRng,
        hooks: &mut dyn Hooks,
    ) -> Result<Sampled> {
        let Start { x, run, blend, extra } = start;
        let (run, blend, extra) = (&run, blend.as_ref(), extra.as_ref());
        let r = &job.request;
        let guided = uses_cfg(r.cfg_scale);
        let added = match self.config.unet.addition {
            Some(_) => {
                let (hh, ww) = (r.height as f32, r.width as f32);
                let row = [hh, ww, 0.0, 0.0, hh, ww];
                let b = if guided { 2 } else { 1 };
                let ids: Vec<f32> = (0..b).flat_map(|_| row).collect();
                Some(Tensor::from_vec(ids, (b, 6), &self.device)?)
            }
            None => None,
        };
        let solver = sampling::solver_fn(job.solver.name)?;
        let mut den = Guided {
            pipe: self,
            cond,
            added: added.as_ref(),
            run,
            scale: r.cfg_scale,
            rescale: r.cfg_rescale,
            guided_steps: guided_steps(r),
            guided,
            hooks,
            blend,
            extra,
            calls: 0,
            nfe: 0,
            step: 0,
            total: super::job::run_steps(r),
            last_step: Instant::now(),
            preview_time: Duration::ZERO,
            cache_every: r.feature_cache,
            cache: None,
            refreshed_at: None,
            shallow_nfe: 0,
            token_merge: r.token_merge,
        };
        let x = solver(&mut den, x, &run.sigmas, &job.params, rng)?;
        let sigma_last = run.sigmas.last().copied().unwrap_or(0.0);
        Ok(Sampled {
            latents: (x * denoiser::c_in(sigma_last))?,
            nfe: den.nfe,
            shallow_nfe: den.shallow_nfe,
            preview_time: den.preview_time,
        })
    }
}

/// What the sampling loop blends back after each step.
pub(super) struct Blend {
    /// The init image's latents (UNet space) and the noise they are noised with.
    pub(super) image: Tensor,
    pub(super) noise: Tensor,
    /// `[1, 1, h, w]`: 1 where the model repaints, 0 where the image is kept.
    pub(super) mask: Tensor,
    pub(super) sigmas: Vec<f64>,
}

impl Blend {
    /// The sample after step `step` (1-based) with the kept region put back: noised to
    /// `sigmas[step]`, or clean after the last step (in the solver's scaling).
    pub(super) fn apply(&self, step: usize, x: &Tensor) -> Result<Tensor> {
        let n = self.sigmas.len() - 1;
        let keep = if step < n {
            (&self.image + (&self.noise * self.sigmas[step])?)?
        } else {
            (&self.image / crate::sampling::denoiser::c_in(self.sigmas[n]))?
        };
        let keep_mask = (1.0 - &self.mask)?;
        Ok((keep.broadcast_mul(&keep_mask)? + x.broadcast_mul(&self.mask)?)?)
    }
}

//! Text to image: pure noise at the schedule's first sigma, sampled to the end, decoded.

use std::time::Instant;

use candle_core::Tensor;

use super::job::uses_cfg;
use super::{Hooks, Job, Output, Pipeline};
use crate::error::Result;
use crate::nets::config::Family;
use crate::protocol::{LatentsOut, Timings};
use crate::rng::TorchRng;
use crate::sampling;

impl Pipeline {
    /// Runs one job to the end (or to cancellation / failure).
    pub fn generate(&self, job: &Job, hooks: &mut dyn Hooks) -> Result<Output> {
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
        let (h, w) = job.latent_size;
        let c = self.config.unet.in_channels;
        let mut rng = TorchRng::new(r.seed);
        let noise = rng.randn_f32(c * h * w);
        let noise = Tensor::from_vec(noise, (1, c, h, w), &self.device)?;
        let x = (noise * run.init_noise_sigma)?;

        let t_loop = Instant::now();
        let s = self.sample(job, &cond, &run, x, &mut rng, hooks)?;
        let t_denoise = t_loop.elapsed().saturating_sub(s.preview_time);

        let t_vae0 = Instant::now();
        let (flat, image) = self.decode(&s.latents)?;
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

//! Trajectory Consistency Distillation sampling (diffusers `TCDScheduler`): from each clean
//! estimate jump deterministically to the level `s = floor((1 - gamma) t_next)`, then re-noise
//! from `s` up to `t_next` with fresh noise. gamma (`--eta`, default 0.3) = 0 is
//! deterministic. For TCD-distilled models and TCD-LoRA at 2-8 steps.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// Integrates from `sigmas[0]` to `sigmas[n]` (the first training sigma).
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], p: &SolverParams, rng: &mut TorchRng) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    let gamma = p.eta;
    for i in 0..n {
        let s = sigmas[i];
        let x0 = d.x0(&x, s)?;
        let eps = ((&x - &x0)? / s)?;
        let t_next = if i + 1 < n {
            d.timestep(sigmas[i + 1]).round().max(0.0)
        } else {
            0.0
        };
        let sigma_s = d.sigma_for_timestep(((1.0 - gamma) * t_next).floor().max(0.0));
        let x_s = (&x0 + (&eps * sigma_s)?)?;
        x = if gamma > 0.0 && i + 1 < n {
            let z = rng.randn_like(&x)?;
            let lift = (sigmas[i + 1] * sigmas[i + 1] - sigma_s * sigma_s).max(0.0).sqrt();
            (&x_s + (z * lift)?)?
        } else {
            x_s
        };
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

//! DDPM ancestral sampling (diffusers `DDPMScheduler`, "fixed_small" variance): the exact
//! posterior mean between the listed timesteps plus its variance as fresh noise.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// Integrates from `sigmas[0]` to `sigmas[n]` (which must end at 0).
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], _p: &SolverParams, rng: &mut TorchRng) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        let (a_t, a_prev) = (1.0 / (1.0 + s * s), 1.0 / (1.0 + s_next * s_next));
        let (b_t, b_prev) = (1.0 - a_t, 1.0 - a_prev);
        let cur_alpha = a_t / a_prev;
        let cur_beta = 1.0 - cur_alpha;
        // Posterior mean in variance-preserving coordinates.
        let c_x0 = a_prev.sqrt() * cur_beta / b_t;
        let c_x = cur_alpha.sqrt() * b_prev / b_t;
        let x_vp = (&x * a_t.sqrt())?;
        let mut prev = ((&x0 * c_x0)? + (x_vp * c_x)?)?;
        if s_next > 0.0 {
            let var = (b_prev / b_t * cur_beta).max(1e-20);
            let z = rng.randn_like(&x)?;
            prev = (prev + (z * var.sqrt())?)?;
        }
        x = (prev * (1.0 / a_prev.sqrt()))?;
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

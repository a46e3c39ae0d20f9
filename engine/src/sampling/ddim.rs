//! DDIM (diffusers `DDIMScheduler`): deterministic at eta = 0, where in the sigma
//! parameterisation it is exactly Euler's step `x' = x0 + sigma' (x - x0) / sigma` on DDIM's
//! schedule (leading spacing, ending at the first training sigma); eta > 0 moves part of the
//! noise into fresh Gaussian noise (eta = 1 is DDPM-like).

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// Integrates from `sigmas[0]` to `sigmas[n]`.
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], p: &SolverParams, rng: &mut TorchRng) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        if p.eta == 0.0 {
            x = (&x0 + ((&x - &x0)? * (s_next / s))?)?;
        } else {
            // In alpha-bar terms (variance preserving): a = 1/(1+s^2).
            let (a_t, a_prev) = (1.0 / (1.0 + s * s), 1.0 / (1.0 + s_next * s_next));
            let var = (1.0 - a_prev) / (1.0 - a_t) * (1.0 - a_t / a_prev);
            let std = p.eta * var.sqrt();
            let eps = ((&x - &x0)? / s)?;
            // x_prev(vp) = sqrt(a_prev) x0 + sqrt(1 - a_prev - std^2) eps + std z; back to sigma
            // coordinates by dividing by sqrt(a_prev).
            let dir = (1.0 - a_prev - std * std).max(0.0).sqrt() / a_prev.sqrt();
            let z = rng.randn_like(&x)?;
            x = ((&x0 + (eps * dir)?)? + (z * (std / a_prev.sqrt()))?)?;
        }
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

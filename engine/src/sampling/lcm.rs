//! Latent Consistency Model sampling (diffusers `LCMScheduler`): each step maps to a clean
//! estimate through the consistency boundary condition, then re-noises to the next level.
//! For LCM-distilled models (and LCM-LoRA) at 2-8 steps, guidance around 1-2.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::{Denoise, c_in};
use crate::error::Result;
use crate::rng::TorchRng;

/// `c_skip`, `c_out` of the boundary condition at timestep `t` (sigma_data 0.5, scale 10).
pub fn boundary(t: f64) -> (f64, f64) {
    let st = t * 10.0;
    let sd2 = 0.25;
    (sd2 / (st * st + sd2), st / (st * st + sd2).sqrt())
}

/// Integrates from `sigmas[0]` to `sigmas[n]`; the result is the last clean estimate.
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], _p: &SolverParams, rng: &mut TorchRng) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    for i in 0..n {
        let s = sigmas[i];
        let x0 = d.x0(&x, s)?;
        let (c_skip, c_out) = boundary(d.timestep(s));
        let denoised = ((&x0 * c_out)? + (&x * (c_skip * c_in(s)))?)?;
        x = if i + 1 < n {
            let z = rng.randn_like(&x)?;
            (&denoised + (z * sigmas[i + 1])?)?
        } else {
            denoised.clone()
        };
        if let Some(nx) = d.step_done(i + 1, &x, &denoised)? {
            x = nx;
        }
    }
    Ok(x)
}

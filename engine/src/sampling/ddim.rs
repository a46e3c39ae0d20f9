//! DDIM (diffusers `DDIMScheduler`, eta = 0).
//!
//! In the sigma parameterisation deterministic DDIM is exactly Euler's step
//! `x' = x0 + sigma' * (x - x0) / sigma`; what makes it DDIM is its schedule (leading spacing,
//! ending at the first training step's noise level rather than 0), built by
//! `RunSchedule::ddim`. It is written in its own closed form here so each step is one fused
//! expression.

use candle_core::Tensor;

use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// Integrates from `sigmas[0]` to `sigmas[n]`.
pub fn sample(
    d: &mut dyn Denoise,
    mut x: Tensor,
    sigmas: &[f64],
    _rng: &mut TorchRng,
) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        // x' = x0 + (s'/s) (x - x0)
        x = (&x0 + ((&x - &x0)? * (s_next / s))?)?;
        d.step_done(i + 1, &x, &x0)?;
    }
    Ok(x)
}

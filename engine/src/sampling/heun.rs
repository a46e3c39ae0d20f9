//! Heun's method (diffusers `HeunDiscreteScheduler`, A1111 "Heun"): Euler predictor plus a
//! trapezoidal corrector; second order, two evaluations per step (one on the last step).

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// Integrates from `sigmas[0]` to `sigmas[n]`.
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], _p: &SolverParams, _rng: &mut TorchRng) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        let slope = ((&x - &x0)? / s)?;
        let dt = s_next - s;
        if s_next == 0.0 {
            x = (&x + (slope * dt)?)?;
        } else {
            let x2 = (&x + (&slope * dt)?)?;
            let x0_2 = d.x0(&x2, s_next)?;
            let slope2 = ((&x2 - &x0_2)? / s_next)?;
            x = (&x + (((slope + slope2)? * 0.5)? * dt)?)?;
        }
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

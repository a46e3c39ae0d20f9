//! Euler ancestral (diffusers `EulerAncestralDiscreteScheduler`, A1111 "Euler a"): an Euler
//! step down to `sigma_down`, then fresh noise of size `sigma_up`. Stochastic, first order.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// `(sigma_down, sigma_up)` for an ancestral step from `s` to `s_next` with noise scale `eta`.
pub fn ancestral_split(s: f64, s_next: f64, eta: f64) -> (f64, f64) {
    if s_next == 0.0 || eta == 0.0 {
        return (s_next, 0.0);
    }
    let up = (eta * (s_next * s_next * (s * s - s_next * s_next) / (s * s)).sqrt()).min(s_next);
    ((s_next * s_next - up * up).max(0.0).sqrt(), up)
}

/// Integrates from `sigmas[0]` to `sigmas[n]`; draws one noise tensor per step (also the last,
/// as diffusers does, so later draws stay aligned).
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], p: &SolverParams, rng: &mut TorchRng) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        let (down, up) = ancestral_split(s, s_next, p.eta);
        let slope = ((&x - &x0)? / s)?;
        x = (&x + (slope * (down - s))?)?;
        let noise = rng.randn_like(&x)?;
        if up > 0.0 {
            x = (&x + (noise * up)?)?;
        }
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

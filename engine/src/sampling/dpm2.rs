//! DPM2 (Karras et al. 2022's second-order sampler; diffusers `KDPM2DiscreteScheduler` and
//! `KDPM2AncestralDiscreteScheduler`, A1111 "DPM2" / "DPM2 a"): an Euler half step to the
//! geometric midpoint of the interval, then the full step with the midpoint's slope. Two
//! evaluations per step; the last step (down to 0) is a plain Euler step.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use super::euler_ancestral::ancestral_split;
use crate::error::Result;
use crate::rng::TorchRng;

fn run(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], eta: f64, rng: &mut TorchRng) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let (down, up) = ancestral_split(s, s_next, eta);
        let x0 = d.x0(&x, s)?;
        let slope = ((&x - &x0)? / s)?;
        if down == 0.0 {
            x = (&x + (slope * (down - s))?)?;
        } else {
            let mid = (s.ln() * 0.5 + down.ln() * 0.5).exp();
            let x_mid = (&x + (slope * (mid - s))?)?;
            let x0_mid = d.x0(&x_mid, mid)?;
            let slope_mid = ((&x_mid - &x0_mid)? / mid)?;
            x = (&x + (slope_mid * (down - s))?)?;
            if eta > 0.0 {
                // diffusers draws noise only on steps with a midpoint evaluation.
                let z = rng.randn_like(&x)?;
                x = (&x + (z * up)?)?;
            }
        }
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

/// `dpm2`: deterministic.
pub fn sample(d: &mut dyn Denoise, x: Tensor, sigmas: &[f64], _p: &SolverParams, rng: &mut TorchRng) -> Result<Tensor> {
    run(d, x, sigmas, 0.0, rng)
}

/// `dpm2-a`: ancestral (noise scale `eta`, 1 by default).
pub fn sample_ancestral(d: &mut dyn Denoise, x: Tensor, sigmas: &[f64], p: &SolverParams, rng: &mut TorchRng) -> Result<Tensor> {
    run(d, x, sigmas, p.eta, rng)
}

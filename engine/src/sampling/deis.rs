//! DEIS (Zhang & Chen 2023), log-rho multistep of order 2 (diffusers
//! `DEISMultistepScheduler` defaults): exponential integration of the noise prediction with
//! polynomial extrapolation in log sigma.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// The integral weights of DEIS' log-rho second-order scheme.
fn ind(t: f64, b: f64, c: f64) -> f64 {
    t * (-c.ln() + t.ln() - 1.0) / (b.ln() - c.ln())
}

/// Integrates from `sigmas[0]` to `sigmas[n]`.
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], _p: &SolverParams, _rng: &mut TorchRng) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    let mut prev: Option<Tensor> = None;
    let mut lower_order_nums = 0;
    for i in 0..n {
        let (s, t) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        let eps = ((&x - &x0)? / s)?;
        let lower_final = i == n - 1 && n < 15;
        let second = lower_order_nums >= 1 && !lower_final && t > 0.0;
        x = match (&prev, second) {
            (Some(m1), true) => {
                let s1 = sigmas[i - 1];
                let c1 = ind(t, s, s1) - ind(s, s, s1);
                let c2 = ind(t, s1, s) - ind(s, s1, s);
                ((&x + (&eps * c1)?)? + (m1 * c2)?)?
            }
            _ => (&x - (&eps * (s - t))?)?,
        };
        prev = Some(eps);
        if lower_order_nums < 2 {
            lower_order_nums += 1;
        }
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

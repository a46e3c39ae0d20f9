//! DPM-Solver++(2S), single-step: `dpm++2s` as diffusers' `DPMSolverSinglestepScheduler`
//! (order 2: steps alternate a first-order step and a second-order step anchored two levels
//! back, one evaluation each), and `dpm++2s-a`, A1111's "DPM++ 2S a" (k-diffusion: a midpoint
//! evaluation in log-sigma within each step, ancestral noise on top; two evaluations per step).

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use super::euler_ancestral::ancestral_split;
use crate::error::Result;
use crate::rng::TorchRng;

/// `dpm++2s` (diffusers' order list `[1, 2, 1, 2, ..., 1]`, last step first order).
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], _p: &SolverParams, _rng: &mut TorchRng) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    let lam = |s: f64| -s.ln();
    let mut orders: Vec<usize> = (0..n).map(|k| if k % 2 == 0 { 1 } else { 2 }).collect();
    if n.is_multiple_of(2) && n >= 2 {
        orders[n - 1] = 1;
    }
    if sigmas[n] == 0.0 && n > 0 {
        orders[n - 1] = 1;
    }
    let mut anchor: Option<(Tensor, f64)> = None;
    let mut prev_x0: Option<Tensor> = None;
    for k in 0..n {
        let (s, t) = (sigmas[k], sigmas[k + 1]);
        let x0 = d.x0(&x, s)?;
        let order = if prev_x0.is_none() { 1 } else { orders[k] };
        x = if order == 1 {
            anchor = Some((x.clone(), s));
            if t == 0.0 {
                x0.clone()
            } else {
                ((&x * (t / s))? - (&x0 * (-(lam(t) - lam(s))).exp_m1())?)?
            }
        } else {
            let (xa, sa) = anchor.clone().unwrap_or((x.clone(), s));
            let m1 = prev_x0.clone().unwrap_or(x0.clone());
            let h = lam(t) - lam(sa);
            let r0 = (lam(s) - lam(sa)) / h;
            let d1 = ((&x0 - &m1)? * (1.0 / r0))?;
            let em = (-h).exp_m1();
            (((&xa * (t / sa))? - (&m1 * em)?)? - (d1 * (0.5 * em))?)?
        };
        prev_x0 = Some(x0.clone());
        if let Some(nx) = d.step_done(k + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

/// `dpm++2s-a` (k-diffusion `sample_dpmpp_2s_ancestral`, eta 1 by default).
pub fn sample_ancestral(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], p: &SolverParams, rng: &mut TorchRng) -> Result<Tensor> {
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        let (down, up) = ancestral_split(s, s_next, p.eta);
        if down == 0.0 {
            let slope = ((&x - &x0)? / s)?;
            x = (&x + (slope * (down - s))?)?;
        } else {
            // Midpoint in lambda = -ln sigma.
            let (t, t_next) = (-s.ln(), -down.ln());
            let h = t_next - t;
            let s_mid = (-(t + 0.5 * h)).exp();
            let x2 = ((&x * (s_mid / s))? - (&x0 * (-0.5 * h).exp_m1())?)?;
            let x0_2 = d.x0(&x2, s_mid)?;
            x = ((&x * (down / s))? - (x0_2 * (-h).exp_m1())?)?;
        }
        if s_next > 0.0 && up > 0.0 {
            let z = rng.randn_like(&x)?;
            x = (&x + (z * up)?)?;
        }
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

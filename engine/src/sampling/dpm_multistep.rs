//! Multistep DPM-Solver (Lu et al. 2022) as diffusers' `DPMSolverMultistepScheduler` runs it:
//! the original noise-prediction form (`dpm-solver-1|2|3`), the data-prediction DPM-Solver++
//! (`dpm++2m`, `dpm++3m`) and its SDE variant (`dpm++2m-sde`).
//!
//! Written in the sigma parameterisation, where with `lambda = -ln sigma` and
//! `h = lambda_t - lambda_s` the updates lose their alpha factors:
//! DPM-Solver++ 1st order `x_t = (s_t/s_s) x - expm1(-h) D0`, DPM-Solver 1st order
//! `x_t = x - s_t expm1(h) eps0`; higher orders add divided differences of past outputs.
//! Like diffusers, the last step (and the one before, under 15 steps) drops to lower order.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// Which member of the family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// Noise prediction (`algorithm_type="dpmsolver"`).
    Noise,
    /// Data prediction (`dpmsolver++`).
    Data,
    /// Data prediction with injected noise (`sde-dpmsolver++`).
    DataSde,
}

/// Runs the solver of the given `order` and variant from `sigmas[0]` to `sigmas[n]`.
pub fn run(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], order: usize, variant: Variant, rng: &mut TorchRng) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    let final_zero = sigmas[n] == 0.0;
    let lam = |s: f64| -s.ln();
    // Model outputs in the variant's form (x0 or eps), newest last, with their sigmas.
    let mut outs: Vec<(Tensor, f64)> = vec![];
    let mut lower_order_nums = 0usize;
    for i in 0..n {
        let (s, t) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        let m = match variant {
            Variant::Noise => ((&x - &x0)? / s)?,
            _ => x0.clone(),
        };
        outs.push((m, s));
        if outs.len() > 3 {
            outs.remove(0);
        }
        let noise = if variant == Variant::DataSde {
            Some(rng.randn_as(&x, candle_core::DType::F32)?)
        } else {
            None
        };
        let lower_final = i == n - 1 && (n < 15 || final_zero);
        let lower_second = i + 2 == n && n < 15;
        let this_order = if order == 1 || lower_order_nums < 1 || lower_final {
            1
        } else if order == 2 || lower_order_nums < 2 || lower_second {
            2
        } else {
            3
        };
        x = update(&x, &outs, t, this_order, variant, noise.as_ref(), lam)?;
        if lower_order_nums < order {
            lower_order_nums += 1;
        }
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

fn update(
    x: &Tensor,
    outs: &[(Tensor, f64)],
    t: f64,
    order: usize,
    variant: Variant,
    noise: Option<&Tensor>,
    lam: impl Fn(f64) -> f64,
) -> Result<Tensor> {
    let k = outs.len();
    let (m0, s0) = (&outs[k - 1].0, outs[k - 1].1);
    if t == 0.0 {
        // h is infinite: every update lands on the newest clean estimate.
        return Ok(match variant {
            Variant::Noise => (x - (m0 * s0)?)?,
            _ => m0.clone(),
        });
    }
    let h = lam(t) - lam(s0);
    // First-difference term D1 (and second difference D2 for order 3).
    let (d1, d2) = match order {
        1 => (None, None),
        2 => {
            let (m1, s1) = (&outs[k - 2].0, outs[k - 2].1);
            let r0 = (lam(s0) - lam(s1)) / h;
            (Some(((m0 - m1)? * (1.0 / r0))?), None)
        }
        _ => {
            let (m1, s1) = (&outs[k - 2].0, outs[k - 2].1);
            let (m2, s2) = (&outs[k - 3].0, outs[k - 3].1);
            let (h0, h1) = (lam(s0) - lam(s1), lam(s1) - lam(s2));
            let (r0, r1) = (h0 / h, h1 / h);
            let d1_0 = ((m0 - m1)? * (1.0 / r0))?;
            let d1_1 = ((m1 - m2)? * (1.0 / r1))?;
            let d1 = (&d1_0 + ((&d1_0 - &d1_1)? * (r0 / (r0 + r1)))?)?;
            let d2 = ((d1_0 - d1_1)? * (1.0 / (r0 + r1)))?;
            (Some(d1), Some(d2))
        }
    };
    match variant {
        Variant::Data => {
            let em = (-h).exp_m1();
            let mut out = ((x * (t / s0))? - (m0 * em)?)?;
            if let Some(d1) = &d1 {
                out = if order == 2 {
                    (out - (d1 * (0.5 * em))?)?
                } else {
                    (out + (d1 * (em / h + 1.0))?)?
                };
            }
            if let Some(d2) = &d2 {
                out = (out - (d2 * ((em + h) / (h * h) - 0.5))?)?;
            }
            Ok(out)
        }
        Variant::Noise => {
            let ep = h.exp_m1();
            let mut out = (x - (m0 * (t * ep))?)?;
            if let Some(d1) = &d1 {
                out = if order == 2 {
                    (out - (d1 * (0.5 * t * ep))?)?
                } else {
                    (out - (d1 * (t * (ep / h - 1.0)))?)?
                };
            }
            if let Some(d2) = &d2 {
                out = (out - (d2 * (t * ((ep - h) / (h * h) - 0.5)))?)?;
            }
            Ok(out)
        }
        Variant::DataSde => {
            let e2 = -(-2.0 * h).exp_m1();
            let mut out = ((x * (t / s0 * (-h).exp()))? + (m0 * e2)?)?;
            if let Some(d1) = &d1 {
                out = (out + (d1 * (0.5 * e2))?)?;
            }
            if let Some(z) = noise {
                out = (out + (z * (t * e2.sqrt()))?)?;
            }
            Ok(out)
        }
    }
}

/// `dpm-solver-1|2|3` (noise prediction).
pub fn dpm_solver_1(d: &mut dyn Denoise, x: Tensor, s: &[f64], _p: &SolverParams, r: &mut TorchRng) -> Result<Tensor> {
    run(d, x, s, 1, Variant::Noise, r)
}
/// See [`dpm_solver_1`].
pub fn dpm_solver_2(d: &mut dyn Denoise, x: Tensor, s: &[f64], _p: &SolverParams, r: &mut TorchRng) -> Result<Tensor> {
    run(d, x, s, 2, Variant::Noise, r)
}
/// See [`dpm_solver_1`].
pub fn dpm_solver_3(d: &mut dyn Denoise, x: Tensor, s: &[f64], _p: &SolverParams, r: &mut TorchRng) -> Result<Tensor> {
    run(d, x, s, 3, Variant::Noise, r)
}
/// `dpm++2m`.
pub fn dpmpp_2m(d: &mut dyn Denoise, x: Tensor, s: &[f64], _p: &SolverParams, r: &mut TorchRng) -> Result<Tensor> {
    run(d, x, s, 2, Variant::Data, r)
}
/// `dpm++3m`.
pub fn dpmpp_3m(d: &mut dyn Denoise, x: Tensor, s: &[f64], _p: &SolverParams, r: &mut TorchRng) -> Result<Tensor> {
    run(d, x, s, 3, Variant::Data, r)
}
/// `dpm++2m-sde`.
pub fn dpmpp_2m_sde(d: &mut dyn Denoise, x: Tensor, s: &[f64], _p: &SolverParams, r: &mut TorchRng) -> Result<Tensor> {
    run(d, x, s, 2, Variant::DataSde, r)
}

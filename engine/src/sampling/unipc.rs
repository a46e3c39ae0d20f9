//! UniPC (Zhao et al. 2023), as diffusers' `UniPCMultistepScheduler` with data prediction:
//! a multistep predictor (UniP) plus a corrector (UniC) that reuses the next step's network
//! evaluation, so it costs one evaluation per step. `bh2` (default) or `bh1` variant.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::{EngineError, Result};
use crate::rng::TorchRng;

const ORDER: usize = 2;

/// Solves the small dense system `a x = b` (Gaussian elimination with partial pivoting).
#[allow(clippy::needless_range_loop)] // row operations read one row while writing another
fn solve(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for c in 0..n {
        let p = (c..n).max_by(|&i, &j| a[i][c].abs().total_cmp(&a[j][c].abs())).unwrap_or(c);
        if a[p][c].abs() < 1e-300 {
            return Err(EngineError::Other("UniPC: singular system (repeated sigmas?)".into()));
        }
        a.swap(c, p);
        b.swap(c, p);
        for r in c + 1..n {
            let f = a[r][c] / a[c][c];
            for k in c..n {
                a[r][k] -= f * a[c][k];
            }
            b[r] -= f * b[c];
        }
    }
    let mut x = vec![0.0; n];
    for r in (0..n).rev() {
        x[r] = (b[r] - (r + 1..n).map(|k| a[r][k] * x[k]).sum::<f64>()) / a[r][r];
    }
    Ok(x)
}

/// `rks`, the `b` vector and `B(h)` of a UniP/UniC update of `order` with step `h` (in lambda).
fn coefficients(order: usize, rks: &[f64], h: f64, bh1: bool) -> (Vec<Vec<f64>>, Vec<f64>, f64, f64) {
    let hh = -h;
    let h_phi_1 = hh.exp_m1();
    let b_h = if bh1 { hh } else { hh.exp_m1() };
    let mut h_phi_k = h_phi_1 / hh - 1.0;
    let mut factorial = 1.0;
    let mut r = vec![];
    let mut b = vec![];
    for i in 1..=order {
        r.push(rks.iter().map(|rk| rk.powi(i as i32 - 1)).collect::<Vec<f64>>());
        b.push(h_phi_k * factorial / b_h);
        factorial *= (i + 1) as f64;
        h_phi_k = h_phi_k / hh - 1.0 / factorial;
    }
    (r, b, b_h, h_phi_1)
}

/// Integrates from `sigmas[0]` to `sigmas[n]`.
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], p: &SolverParams, _rng: &mut TorchRng) -> Result<Tensor> {
    let n = sigmas.len() - 1;
    let lam = |s: f64| -s.ln();
    let mut outs: Vec<Tensor> = vec![];
    let mut last_sample: Option<Tensor> = None;
    let mut this_order = 1usize;
    let mut lower_order_nums = 0usize;
    for i in 0..n {
        let m_t = d.x0(&x, sigmas[i])?;
        // UniC: correct the sample the last predictor produced, with this evaluation.
        if i > 0
            && let Some(prev) = &last_sample
        {
            let m0 = outs.last().ok_or_else(|| EngineError::Other("UniPC history empty".into()))?;
            let (s_t, s0) = (sigmas[i], sigmas[i - 1]);
            let h = lam(s_t) - lam(s0);
            let mut rks = vec![];
            let mut d1s = vec![];
            for k in 1..this_order {
                let si = sigmas[i - 1 - k];
                let rk = (lam(si) - lam(s0)) / h;
                rks.push(rk);
                d1s.push(((&outs[outs.len() - 1 - k] - m0)? * (1.0 / rk))?);
            }
            rks.push(1.0);
            let (r, b, b_h, h_phi_1) = coefficients(this_order, &rks, h, p.bh1);
            let rhos = if this_order == 1 { vec![0.5] } else { solve(r, b)? };
            let mut corr = ((prev * (s_t / s0))? - (m0 * h_phi_1)?)?;
            let mut res = ((&m_t - m0)? * rhos[rhos.len() - 1])?;
            for (rho, d1) in rhos.iter().zip(&d1s) {
                res = (res + (d1 * *rho)?)?;
            }
            corr = (corr - (res * b_h)?)?;
            x = corr;
        }
        outs.push(m_t.clone());
        if outs.len() > ORDER {
            outs.remove(0);
        }
        this_order = ORDER.min(n - i).min(lower_order_nums + 1);
        last_sample = Some(x.clone());
        // UniP: predict the next sample.
        let (s_t, s0) = (sigmas[i + 1], sigmas[i]);
        let m0 = &outs[outs.len() - 1];
        x = if s_t == 0.0 {
            m0.clone()
        } else {
            let h = lam(s_t) - lam(s0);
            let mut rks = vec![];
            let mut d1s = vec![];
            for k in 1..this_order {
                let si = sigmas[i - k];
                let rk = (lam(si) - lam(s0)) / h;
                rks.push(rk);
                d1s.push(((&outs[outs.len() - 1 - k] - m0)? * (1.0 / rk))?);
            }
            rks.push(1.0);
            let (r, b, b_h, h_phi_1) = coefficients(this_order, &rks, h, p.bh1);
            let mut pred = ((&x * (s_t / s0))? - (m0 * h_phi_1)?)?;
            if !d1s.is_empty() {
                let rhos = if this_order == 2 {
                    vec![0.5]
                } else {
                    let k = r.len() - 1;
                    solve(r[..k].iter().map(|row| row[..k].to_vec()).collect(), b[..k].to_vec())?
                };
                let mut res: Option<Tensor> = None;
                for (rho, d1) in rhos.iter().zip(&d1s) {
                    let term = (d1 * *rho)?;
                    res = Some(match res {
                        Some(r) => (r + term)?,
                        None => term,
                    });
                }
                if let Some(res) = res {
                    pred = (pred - (res * b_h)?)?;
                }
            }
            pred
        };
        if lower_order_nums < ORDER {
            lower_order_nums += 1;
        }
        if let Some(nx) = d.step_done(i + 1, &x, &m_t)? {
            x = nx;
        }
    }
    Ok(x)
}

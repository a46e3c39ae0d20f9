//! An exact oracle for solvers: data drawn from a Gaussian.
//!
//! For data `x0 ~ N(mu, s^2)` (independently per coordinate) the ideal denoiser is
//! `D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)` and the probability-flow ODE keeps
//! `(x - mu) / sqrt(s^2 + sigma^2)` constant, so every solver's endpoint can be compared with
//! the exact one. Coordinates use a spread of `s` so the problem is neither trivial nor stiff.

use candle_core::{Device, Tensor};

use super::denoiser::Denoise;
use super::schedule::{ModelSchedule, ScheduleKind};
use super::{SolverInfo, default_params, evaluations, solver_fn};
use crate::error::Result;
use crate::rng::TorchRng;

const DIM: usize = 64;

struct Gaussian {
    mu: Tensor,
    s2: Tensor,
    model: ModelSchedule,
}

impl Denoise for Gaussian {
    fn x0(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        let shrink = (&self.s2 / (&self.s2 + sigma * sigma)?)?;
        Ok((&self.mu + ((x - &self.mu)? * shrink)?)?)
    }
    fn timestep(&self, sigma: f64) -> f64 {
        self.model.sigma_to_t_diffusers(sigma)
    }
    fn sigma_for_timestep(&self, t: f64) -> f64 {
        self.model.sigma_at(t)
    }
    fn step_done(&mut self, _: usize, _: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// Steps that spend about `nfe` evaluations with this solver.
pub fn steps_for_nfe(info: &SolverInfo, nfe: u32) -> u32 {
    (1..=nfe).rev().find(|&n| evaluations(info, n) <= nfe).unwrap_or(1)
}

/// Relative L2 error of the solver's endpoint after `steps` steps on a Karras schedule from
/// SD's sigma_max to sigma_min, against the exact ODE solution.
pub fn endpoint_error(info: &SolverInfo, steps: u32) -> Result<f64> {
    let dev = Device::Cpu;
    let mu: Vec<f64> = (0..DIM).map(|i| ((i as f64) * 0.37).sin() * 0.8).collect();
    let s: Vec<f64> = (0..DIM).map(|i| 0.2 + 1.3 * (i as f64 / (DIM - 1) as f64)).collect();
    let s2: Vec<f64> = s.iter().map(|v| v * v).collect();
    let model = ModelSchedule::stable_diffusion();
    let run = super::schedule::build(
        &model,
        super::schedule::Convention::Karras,
        ScheduleKind::Karras,
        steps as usize,
        false,
    );
    // Integrate to sigma_min, not 0: keep every solver's final step a regular one.
    let mut sigmas = run.sigmas.clone();
    let last = sigmas.len() - 1;
    sigmas.truncate(last);
    let (s_start, s_end) = (sigmas[0], *sigmas.last().unwrap_or(&sigmas[0]));
    let z = TorchRng::new(7).randn_f64(DIM);
    let start: Vec<f64> = (0..DIM).map(|i| mu[i] + (s2[i] + s_start * s_start).sqrt() * z[i]).collect();
    let exact: Vec<f64> = (0..DIM)
        .map(|i| mu[i] + (start[i] - mu[i]) * ((s2[i] + s_end * s_end) / (s2[i] + s_start * s_start)).sqrt())
        .collect();
    let mut d = Gaussian {
        mu: Tensor::from_vec(mu, DIM, &dev)?,
        s2: Tensor::from_vec(s2, DIM, &dev)?,
        model,
    };
    let x = Tensor::from_vec(start, DIM, &dev)?;
    let mut params = default_params(info);
    params.eta = 0.0;
    let out: Vec<f64> = solver_fn(info.name)?(&mut d, x, &sigmas, &params, &mut TorchRng::new(0))?.to_vec1()?;
    let num: f64 = out.iter().zip(&exact).map(|(a, b)| (a - b).powi(2)).sum();
    let den: f64 = exact.iter().map(|b| b * b).sum();
    Ok((num / den).sqrt())
}

/// Least-squares slope of `-log(error)` against `log(NFE)`: the observed order.
pub fn observed_order(points: &[(u32, f64)]) -> f64 {
    let xs: Vec<f64> = points.iter().map(|(n, _)| (*n as f64).ln()).collect();
    let ys: Vec<f64> = points.iter().map(|(_, e)| -e.max(1e-300).ln()).collect();
    let n = xs.len() as f64;
    let (mx, my) = (xs.iter().sum::<f64>() / n, ys.iter().sum::<f64>() / n);
    let cov: f64 = xs.iter().zip(&ys).map(|(x, y)| (x - mx) * (y - my)).sum();
    let var: f64 = xs.iter().map(|x| (x - mx).powi(2)).sum();
    cov / var
}

//! PLMS (Liu et al. 2022, "pseudo linear multistep"; diffusers `PNDMScheduler` with
//! `skip_prk_steps`, A1111 "PLMS"): Adams-Bashforth on the noise prediction with the DDIM
//! transfer. The first step is taken twice (an improved-Euler start), so n steps cost n + 1
//! evaluations.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

/// Integrates from `sigmas[0]` to `sigmas[n]`.
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], _p: &SolverParams, _rng: &mut TorchRng) -> Result<Tensor> {
    let mut ets: Vec<Tensor> = vec![];
    for i in 0..sigmas.len() - 1 {
        let (s, s_next) = (sigmas[i], sigmas[i + 1]);
        let x0 = d.x0(&x, s)?;
        let e = ((&x - &x0)? / s)?;
        // The DDIM transfer in sigma coordinates: x' = x - (s - s') eps.
        let dt = s - s_next;
        let combined = if i == 0 {
            let x1 = (&x - (&e * dt)?)?;
            let x0_1 = d.x0(&x1, s_next)?;
            let e1 = ((&x1 - &x0_1)? / s_next)?;
            ((&e + e1)? * 0.5)?
        } else {
            let k = ets.len();
            match k {
                1 => (((&e * 3.0)? - &ets[0])? * 0.5)?,
                2 => ((((&e * 23.0)? - (&ets[1] * 16.0)?)? + (&ets[0] * 5.0)?)? * (1.0 / 12.0))?,
                _ => {
                    let (e1, e2, e3) = (&ets[k - 1], &ets[k - 2], &ets[k - 3]);
                    (((((&e * 55.0)? - (e1 * 59.0)?)? + (e2 * 37.0)?)? - (e3 * 9.0)?)? * (1.0 / 24.0))?
                }
            }
        };
        ets.push(e);
        if ets.len() > 3 {
            ets.remove(0);
        }
        x = (&x - (combined * dt)?)?;
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

//! Linear multistep (diffusers `LMSDiscreteScheduler`, A1111 "LMS"), order 4: the slope
//! history is integrated against Lagrange polynomials in sigma.

use candle_core::Tensor;

use super::SolverParams;
use super::denoiser::Denoise;
use crate::error::Result;
use crate::rng::TorchRng;

const ORDER: usize = 4;

/// Integral over [a, b] of the Lagrange basis polynomial `j` on the nodes (exact, by
/// expanding the polynomial; diffusers integrates numerically to the same values).
fn lagrange_integral(nodes: &[f64], j: usize, a: f64, b: f64) -> f64 {
    // Build coefficients of prod_{k != j} (tau - nodes[k]) / (nodes[j] - nodes[k]).
    let mut coeffs = vec![1.0f64];
    let mut denom = 1.0;
    for (k, &nk) in nodes.iter().enumerate() {
        if k == j {
            continue;
        }
        let mut next = vec![0.0; coeffs.len() + 1];
        for (p, c) in coeffs.iter().enumerate() {
            next[p + 1] += c;
            next[p] -= c * nk;
        }
        coeffs = next;
        denom *= nodes[j] - nk;
    }
    let prim = |t: f64| {
        coeffs
            .iter()
            .enumerate()
            .map(|(p, c)| c * t.powi(p as i32 + 1) / (p + 1) as f64)
            .sum::<f64>()
    };
    (prim(b) - prim(a)) / denom
}

/// Integrates from `sigmas[0]` to `sigmas[n]`.
pub fn sample(d: &mut dyn Denoise, mut x: Tensor, sigmas: &[f64], _p: &SolverParams, _rng: &mut TorchRng) -> Result<Tensor> {
    let mut slopes: Vec<Tensor> = vec![];
    for i in 0..sigmas.len() - 1 {
        let x0 = d.x0(&x, sigmas[i])?;
        slopes.push(((&x - &x0)? / sigmas[i])?);
        if slopes.len() > ORDER {
            slopes.remove(0);
        }
        let order = (i + 1).min(ORDER);
        // nodes[j] is sigma of the slope j steps back.
        let nodes: Vec<f64> = (0..order).map(|j| sigmas[i - j]).collect();
        for j in 0..order {
            let c = lagrange_integral(&nodes, j, sigmas[i], sigmas[i + 1]);
            x = (&x + (&slopes[slopes.len() - 1 - j] * c)?)?;
        }
        if let Some(nx) = d.step_done(i + 1, &x, &x0)? {
            x = nx;
        }
    }
    Ok(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lagrange_weights_integrate_polynomials_exactly() {
        let nodes = [3.0, 2.0, 1.5];
        // Integrating f(tau) = tau^2 through its interpolant on the nodes is exact.
        let approx: f64 = (0..3).map(|j| lagrange_integral(&nodes, j, 3.0, 1.0) * nodes[j] * nodes[j]).sum();
        assert!((approx - (1.0f64.powi(3) - 27.0) / 3.0).abs() < 1e-12);
    }
}

//! The solver lab: the same prompt and seed run by several solvers at equal cost (network
//! evaluations, CFG's second pass counted), each cell measured against a long reference run
//! of the same seed (relative L2 of the final latents, PSNR of the decoded picture).

use std::time::Duration;

use super::{Hooks, Output, Pipeline, steps_for_budget};
use crate::error::Result;
use crate::protocol::{GenerateRequest, ImageRgb8};

/// What to compare: a base request (prompt, seed, size, guidance, schedule), the solvers,
/// the NFE budgets, and the reference run (solver and steps).
#[derive(Clone, Debug)]
pub struct CompareSpec {
    pub base: GenerateRequest,
    pub solvers: Vec<String>,
    pub budgets: Vec<u32>,
    pub reference_solver: String,
    pub reference_steps: u32,
}

/// One cell: a solver at a budget.
#[derive(Clone, Debug)]
pub struct Cell {
    pub solver: String,
    pub budget: u32,
    /// 0 when the budget buys no step (a budget of 1 with CFG); the fields below are then empty.
    pub steps: u32,
    /// Network evaluations the run spent (the budget, or the nearest below where the solver's
    /// step cost does not divide it).
    pub nfe: u32,
    pub time: Duration,
    /// ||x - x_ref|| / ||x_ref|| over the final latents.
    pub latent_rel_l2: f64,
    /// Of the decoded pictures, in dB (infinite when identical).
    pub psnr: f64,
    pub image: Option<ImageRgb8>,
    pub metadata: String,
}

/// The reference run and the cells, row by row (solver), budget by budget.
pub struct Comparison {
    pub reference: Output,
    pub cells: Vec<Cell>,
}

/// Relative L2 distance of `x` from `reference`.
pub fn latent_rel_l2(x: &[f32], reference: &[f32]) -> f64 {
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in x.iter().zip(reference) {
        num += f64::from(a - b).powi(2);
        den += f64::from(*b).powi(2);
    }
    if x.len() != reference.len() {
        return f64::INFINITY;
    }
    if den == 0.0 {
        return if num == 0.0 { 0.0 } else { f64::INFINITY };
    }
    (num / den).sqrt()
}

/// Peak signal-to-noise ratio of two 8-bit pictures of one size, in dB.
pub fn psnr(a: &ImageRgb8, b: &ImageRgb8) -> f64 {
    if (a.width, a.height) != (b.width, b.height) || a.pixels.len() != b.pixels.len() || a.pixels.is_empty() {
        return 0.0;
    }
    let mse = a
        .pixels
        .iter()
        .zip(&b.pixels)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum::<f64>()
        / a.pixels.len() as f64;
    if mse == 0.0 {
        f64::INFINITY
    } else {
        10.0 * (255.0f64 * 255.0 / mse).log10()
    }
}

/// The request of one cell: the base with the solver and the steps its budget buys.
pub fn cell_request(base: &GenerateRequest, solver: &str, budget: u32) -> Option<GenerateRequest> {
    let mut r = GenerateRequest {
        solver: solver.to_string(),
        preview_every: 0,
        ..base.clone()
    };
    r.steps = steps_for_budget(&r, budget)?;
    Some(r)
}

/// Runs the reference, then every cell (`on_cell` hears of each as it ends).
pub fn compare(pipe: &Pipeline, spec: &CompareSpec, hooks: &mut dyn Hooks, on_cell: &mut dyn FnMut(&Cell)) -> Result<Comparison> {
    let reference_request = GenerateRequest {
        solver: spec.reference_solver.clone(),
        steps: spec.reference_steps,
        preview_every: 0,
        ..spec.base.clone()
    };
    let reference = pipe.generate(&pipe.validate(&reference_request)?, hooks)?;
    let mut cells = vec![];
    for solver in &spec.solvers {
        for &budget in &spec.budgets {
            let cell = match cell_request(&spec.base, solver, budget) {
                None => {
                    // Still checks the solver's name: an unknown one is an error, not a gap.
                    pipe.validate(&GenerateRequest {
                        solver: solver.clone(),
                        ..spec.base.clone()
                    })?;
                    Cell {
                        solver: solver.clone(),
                        budget,
                        steps: 0,
                        nfe: 0,
                        time: Duration::ZERO,
                        latent_rel_l2: f64::NAN,
                        psnr: f64::NAN,
                        image: None,
                        metadata: String::new(),
                    }
                }
                Some(r) => {
                    let out = pipe.generate(&pipe.validate(&r)?, hooks)?;
                    Cell {
                        solver: solver.clone(),
                        budget,
                        steps: r.steps,
                        nfe: out.timings.nfe,
                        time: out.timings.total,
                        latent_rel_l2: latent_rel_l2(&out.latents.data, &reference.latents.data),
                        psnr: psnr(&out.image, &reference.image),
                        image: Some(out.image),
                        metadata: out.metadata,
                    }
                }
            };
            on_cell(&cell);
            cells.push(cell);
        }
    }
    Ok(Comparison { reference, cells })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_by_hand() {
        assert_eq!(latent_rel_l2(&[3.0, 4.0], &[3.0, 4.0]), 0.0);
        // ||(0, 1)|| / ||(3, 4)|| = 1/5.
        assert!((latent_rel_l2(&[3.0, 5.0], &[3.0, 4.0]) - 0.2).abs() < 1e-12);
        assert!(latent_rel_l2(&[1.0], &[0.0]).is_infinite());
        let img = |v: u8| ImageRgb8 {
            width: 2,
            height: 1,
            pixels: vec![v; 6],
        };
        assert!(psnr(&img(10), &img(10)).is_infinite());
        // Every channel off by 1: 10 log10(255^2 / 1) = 48.13 dB.
        assert!((psnr(&img(10), &img(11)) - 48.130_803_608).abs() < 1e-6);
        assert_eq!(
            psnr(
                &img(10),
                &ImageRgb8 {
                    width: 1,
                    height: 2,
                    pixels: vec![10; 6]
                }
            ),
            0.0
        );
    }
}

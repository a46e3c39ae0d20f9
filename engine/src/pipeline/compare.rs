//! The solver lab: the same prompt and seed run by several solvers at equal cost (network
//! evaluations, CFG's second pass counted), each cell measured against a long reference run
//! of the same seed (relative L2 of the final latents, PSNR of the decoded picture).

use std::time::Duration;

use super::{Hooks, Output, Pipeline, request_nfe, steps_for_budget};
use crate::error::Result;
use crate::protocol::{CompareCell, CompareRequest, GenerateRequest, ImageRgb8};

/// What to compare (the protocol's request).
pub type CompareSpec = CompareRequest;

/// One cell (the protocol's).
pub type Cell = CompareCell;

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

fn reference_request(spec: &CompareSpec) -> GenerateRequest {
    GenerateRequest {
        solver: spec.reference_solver.clone(),
        steps: spec.reference_steps,
        preview_every: 0,
        ..spec.base.clone()
    }
}

/// Checks a comparison before it runs; returns its steps (all runs together) and NFE.
pub fn plan(pipe: &Pipeline, spec: &CompareSpec) -> Result<(u32, u32)> {
    if spec.solvers.is_empty() || spec.budgets.is_empty() {
        return Err(crate::error::EngineError::InvalidRequest(
            "a comparison needs at least one solver and one budget".into(),
        ));
    }
    if spec.budgets.iter().any(|&b| b == 0 || b > 10_000) || spec.solvers.len() * spec.budgets.len() > 400 {
        return Err(crate::error::EngineError::InvalidRequest(
            "budgets must be 1 to 10000 NFE, and a comparison at most 400 cells".into(),
        ));
    }
    let reference = reference_request(spec);
    pipe.validate(&reference)?;
    let (mut steps, mut nfe) = (reference.steps, request_nfe(&reference).unwrap_or(0));
    for solver in &spec.solvers {
        pipe.validate(&GenerateRequest {
            solver: solver.clone(),
            ..spec.base.clone()
        })?;
        for &b in &spec.budgets {
            if let Some(r) = cell_request(&spec.base, solver, b) {
                steps += r.steps;
                nfe += request_nfe(&r).unwrap_or(0);
            }
        }
    }
    Ok((steps, nfe))
}

/// Passes everything on, with the step counts of one run shifted to the comparison's own
/// (so progress counts up once over all the runs) and no previews.
struct Shifted<'a> {
    inner: &'a mut dyn Hooks,
    done: u32,
    total: u32,
}

impl Hooks for Shifted<'_> {
    fn cancelled(&self) -> bool {
        self.inner.cancelled()
    }
    fn progress(&mut self, step: u32, _total: u32, step_time: Duration) {
        self.inner.progress(self.done + step, self.total, step_time);
    }
    fn wants_preview(&self, _step: u32) -> bool {
        false
    }
    fn preview(&mut self, _step: u32, _image: ImageRgb8) {}
    fn warning(&mut self, message: String) {
        self.inner.warning(message);
    }
}

/// Runs the reference, then every cell (`hooks.cell` hears of each as it ends).
pub fn compare(pipe: &Pipeline, spec: &CompareSpec, hooks: &mut dyn Hooks) -> Result<Comparison> {
    let (total, _) = plan(pipe, spec)?;
    let reference_request = reference_request(spec);
    let mut shifted = Shifted {
        inner: hooks,
        done: 0,
        total,
    };
    let reference = pipe.generate(&pipe.validate(&reference_request)?, &mut shifted)?;
    shifted.done += reference_request.steps;
    let mut cells = vec![];
    for solver in &spec.solvers {
        for &budget in &spec.budgets {
            let cell = match cell_request(&spec.base, solver, budget) {
                None => Cell {
                    solver: solver.clone(),
                    budget,
                    steps: 0,
                    nfe: 0,
                    time: Duration::ZERO,
                    latent_rel_l2: f64::NAN,
                    psnr: f64::NAN,
                    image: None,
                    metadata: String::new(),
                },
                Some(r) => {
                    let out = pipe.generate(&pipe.validate(&r)?, &mut shifted)?;
                    shifted.done += r.steps;
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
            shifted.inner.cell(&cell);
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

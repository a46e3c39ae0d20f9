//! Sampling along three independent axes: schedules, the denoiser, and solvers.

pub mod ddim;
pub mod denoiser;
pub mod euler;
pub mod schedule;

use candle_core::Tensor;

use crate::error::{EngineError, Result};
use crate::rng::TorchRng;
use denoiser::Denoise;
use schedule::{ModelSchedule, RunSchedule, Spacing};

/// A solver: a pure function of the denoiser, the start sample, the sigmas and the rng.
pub type SolverFn = fn(&mut dyn Denoise, Tensor, &[f64], &mut TorchRng) -> Result<Tensor>;

/// One registered solver.
#[derive(Clone, Copy, Debug)]
pub struct SolverInfo {
    pub name: &'static str,
    /// Name A1111 writes in its `Sampler:` field.
    pub a1111: &'static str,
    pub order: u32,
    pub evals_per_step: u32,
    pub stochastic: bool,
    pub reference: &'static str,
}

/// Every solver, in the order the CLI lists them.
pub const SOLVERS: &[SolverInfo] = &[
    SolverInfo {
        name: "euler",
        a1111: "Euler",
        order: 1,
        evals_per_step: 1,
        stochastic: false,
        reference: "EulerDiscreteScheduler",
    },
    SolverInfo {
        name: "ddim",
        a1111: "DDIM",
        order: 1,
        evals_per_step: 1,
        stochastic: false,
        reference: "DDIMScheduler (eta 0)",
    },
];

/// Looks a solver up by its CLI name (case-insensitive).
pub fn solver_info(name: &str) -> Result<&'static SolverInfo> {
    let lname = name.to_ascii_lowercase();
    SOLVERS.iter().find(|s| s.name == lname).ok_or_else(|| {
        let names: Vec<&str> = SOLVERS.iter().map(|s| s.name).collect();
        EngineError::InvalidRequest(format!(
            "unknown solver '{name}' (known: {})",
            names.join(", ")
        ))
    })
}

/// The function behind a solver name: the one dispatch table.
pub fn solver_fn(name: &str) -> Result<SolverFn> {
    Ok(match solver_info(name)?.name {
        "ddim" => ddim::sample,
        _ => euler::sample,
    })
}

/// The default run schedule of a solver, as its diffusers scheduler builds it for SD.
pub fn default_schedule(solver: &str, model: &ModelSchedule, steps: usize) -> Result<RunSchedule> {
    Ok(match solver_info(solver)?.name {
        "ddim" => RunSchedule::ddim(model, Spacing::Leading, steps),
        _ => RunSchedule::discrete(model, Spacing::Linspace, steps),
    })
}

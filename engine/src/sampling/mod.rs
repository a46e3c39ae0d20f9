//! Sampling along three independent axes: schedules ([`schedule`]), the denoiser
//! ([`denoiser`]) and solvers (one file each, registered in [`SOLVERS`] and [`solver_fn`]).

pub mod ddim;
pub mod ddpm;
pub mod deis;
pub mod denoiser;
pub mod dpm2;
pub mod dpm_multistep;
pub mod dpmpp_2s;
pub mod euler;
pub mod euler_ancestral;
pub mod heun;
pub mod lcm;
pub mod lms;
pub mod oracle;
pub mod plms;
pub mod schedule;
pub mod tcd;
pub mod unipc;

use candle_core::Tensor;

use crate::error::{EngineError, Result};
use crate::rng::TorchRng;
use denoiser::Denoise;
use schedule::{Convention, ModelSchedule, RunSchedule, ScheduleKind};

/// Knobs some solvers take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SolverParams {
    /// Noise injected per step: DDIM's eta (0 = deterministic), ancestral solvers' scale (1).
    pub eta: f64,
    /// UniPC's B(h) = h variant instead of expm1(h).
    pub bh1: bool,
}

/// A solver: a pure function of the denoiser, the start sample, the sigmas, its parameters
/// and the rng (its only source of noise).
pub type SolverFn = fn(&mut dyn Denoise, Tensor, &[f64], &SolverParams, &mut TorchRng) -> Result<Tensor>;

/// One registered solver.
#[derive(Clone, Copy, Debug)]
pub struct SolverInfo {
    pub name: &'static str,
    /// Name A1111 writes in its `Sampler:` field.
    pub a1111: &'static str,
    /// Order of accuracy (UniPC: its second-order predictor plus corrector give order 3).
    pub order: u32,
    /// Network evaluations per step (before CFG doubles them).
    pub evals_per_step: u32,
    pub stochastic: bool,
    /// Default noise scale (eta) where the solver has one.
    pub default_eta: f64,
    pub reference: &'static str,
    /// Which diffusers scheduler's timestep conventions the default schedule follows.
    pub convention: Convention,
}

const KARRAS: Convention = Convention::Karras;
const MULTI: Convention = Convention::Multistep { final_zero: true };
const MULTI_MIN: Convention = Convention::Multistep { final_zero: false };

#[allow(clippy::too_many_arguments)] // a table row constructor
const fn info(
    name: &'static str,
    a1111: &'static str,
    order: u32,
    evals: u32,
    stochastic: bool,
    eta: f64,
    reference: &'static str,
    convention: Convention,
) -> SolverInfo {
    SolverInfo {
        name,
        a1111,
        order,
        evals_per_step: evals,
        stochastic,
        default_eta: eta,
        reference,
        convention,
    }
}

/// Every solver, in the order the CLI lists them.
pub const SOLVERS: &[SolverInfo] = &[
    info("euler", "Euler", 1, 1, false, 0.0, "EulerDiscreteScheduler", KARRAS),
    info("euler-a", "Euler a", 1, 1, true, 1.0, "EulerAncestralDiscreteScheduler", KARRAS),
    info("heun", "Heun", 2, 2, false, 0.0, "HeunDiscreteScheduler", KARRAS),
    info("lms", "LMS", 4, 1, false, 0.0, "LMSDiscreteScheduler", KARRAS),
    info(
        "ddim",
        "DDIM",
        1,
        1,
        false,
        0.0,
        "DDIMScheduler (eta 0; --eta for stochastic)",
        Convention::Ddim,
    ),
    info("ddpm", "DDPM", 1, 1, true, 1.0, "DDPMScheduler", Convention::Ddpm),
    info(
        "dpm-solver-1",
        "DPM-Solver 1",
        1,
        1,
        false,
        0.0,
        "DPMSolverMultistepScheduler(dpmsolver, order 1)",
        MULTI_MIN,
    ),
    info(
        "dpm-solver-2",
        "DPM-Solver 2",
        2,
        1,
        false,
        0.0,
        "DPMSolverMultistepScheduler(dpmsolver, order 2)",
        MULTI_MIN,
    ),
    info(
        "dpm-solver-3",
        "DPM-Solver 3",
        3,
        1,
        false,
        0.0,
        "DPMSolverMultistepScheduler(dpmsolver, order 3)",
        MULTI_MIN,
    ),
    info(
        "dpm++2m",
        "DPM++ 2M",
        2,
        1,
        false,
        0.0,
        "DPMSolverMultistepScheduler(dpmsolver++, order 2)",
        MULTI,
    ),
    info(
        "dpm++3m",
        "DPM++ 3M",
        3,
        1,
        false,
        0.0,
        "DPMSolverMultistepScheduler(dpmsolver++, order 3)",
        MULTI,
    ),
    info(
        "dpm++2m-sde",
        "DPM++ 2M SDE",
        2,
        1,
        true,
        1.0,
        "DPMSolverMultistepScheduler(sde-dpmsolver++)",
        MULTI,
    ),
    info(
        "dpm++2s",
        "DPM++ 2S",
        2,
        1,
        false,
        0.0,
        "DPMSolverSinglestepScheduler(dpmsolver++, order 2)",
        MULTI,
    ),
    info(
        "dpm++2s-a",
        "DPM++ 2S a",
        2,
        2,
        true,
        1.0,
        "none (k-diffusion sample_dpmpp_2s_ancestral)",
        KARRAS,
    ),
    info("unipc", "UniPC", 3, 1, false, 0.0, "UniPCMultistepScheduler(bh2)", MULTI),
    info("unipc-bh1", "UniPC", 3, 1, false, 0.0, "UniPCMultistepScheduler(bh1)", MULTI),
    info("dpm2", "DPM2", 2, 2, false, 0.0, "KDPM2DiscreteScheduler", KARRAS),
    info("dpm2-a", "DPM2 a", 2, 2, true, 1.0, "KDPM2AncestralDiscreteScheduler", KARRAS),
    info("plms", "PLMS", 4, 1, false, 0.0, "PNDMScheduler(skip_prk_steps)", Convention::Ddim),
    info("deis", "DEIS", 2, 1, false, 0.0, "DEISMultistepScheduler(order 2)", MULTI_MIN),
    info("lcm", "LCM", 1, 1, true, 1.0, "LCMScheduler", Convention::Lcm),
    info("tcd", "TCD", 1, 1, true, 0.3, "TCDScheduler (gamma = --eta, 0.3)", Convention::Tcd),
];

/// Looks a solver up by its CLI name (case-insensitive).
pub fn solver_info(name: &str) -> Result<&'static SolverInfo> {
    let lname = name.to_ascii_lowercase();
    SOLVERS.iter().find(|s| s.name == lname).ok_or_else(|| {
        let names: Vec<&str> = SOLVERS.iter().map(|s| s.name).collect();
        EngineError::InvalidRequest(format!("unknown solver '{name}' (known: {})", names.join(", ")))
    })
}

/// The function behind a solver name: the one dispatch table.
pub fn solver_fn(name: &str) -> Result<SolverFn> {
    Ok(match solver_info(name)?.name {
        "euler" => euler::sample,
        "euler-a" => euler_ancestral::sample,
        "heun" => heun::sample,
        "lms" => lms::sample,
        "dpm2" => dpm2::sample,
        "dpm2-a" => dpm2::sample_ancestral,
        "plms" => plms::sample,
        "ddim" => ddim::sample,
        "ddpm" => ddpm::sample,
        "dpm-solver-1" => dpm_multistep::dpm_solver_1,
        "dpm-solver-2" => dpm_multistep::dpm_solver_2,
        "dpm-solver-3" => dpm_multistep::dpm_solver_3,
        "dpm++2m" => dpm_multistep::dpmpp_2m,
        "dpm++3m" => dpm_multistep::dpmpp_3m,
        "dpm++2m-sde" => dpm_multistep::dpmpp_2m_sde,
        "unipc" | "unipc-bh1" => unipc::sample,
        "deis" => deis::sample,
        "dpm++2s" => dpmpp_2s::sample,
        "dpm++2s-a" => dpmpp_2s::sample_ancestral,
        "tcd" => tcd::sample,
        "lcm" => lcm::sample,
        other => {
            return Err(EngineError::InvalidRequest(format!(
                "solver '{other}' is registered but has no implementation"
            )));
        }
    })
}

/// Default parameters of a solver (eta, variant).
pub fn default_params(info: &SolverInfo) -> SolverParams {
    SolverParams {
        eta: info.default_eta,
        bh1: info.name == "unipc-bh1",
    }
}

/// Network evaluations of an `n`-step run (without CFG's doubling).
pub fn evaluations(info: &SolverInfo, n: u32) -> u32 {
    match info.name {
        // The last step of a second-order single-step method has no corrector (sigma = 0).
        "heun" | "dpm2" | "dpm2-a" | "dpm++2s-a" => (2 * n).saturating_sub(1),
        // PLMS takes its first step twice.
        "plms" if n > 0 => n + 1,
        _ => n * info.evals_per_step,
    }
}

/// The run schedule of a solver with a schedule kind, following the solver's diffusers
/// conventions for `Default` and the discrete spacings.
pub fn run_schedule(info: &SolverInfo, kind: ScheduleKind, model: &ModelSchedule, steps: usize, sdxl: bool) -> RunSchedule {
    schedule::build(model, info.convention, kind, steps, sdxl)
}

/// The default run schedule of a solver, as its diffusers scheduler builds it for SD.
pub fn default_schedule(solver: &str, model: &ModelSchedule, steps: usize) -> Result<RunSchedule> {
    Ok(run_schedule(solver_info(solver)?, ScheduleKind::Default, model, steps, false))
}

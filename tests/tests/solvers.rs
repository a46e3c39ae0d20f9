//! Solver-only parity with diffusers' schedulers (fixtures/solvers), in f64, around the same
//! analytic stand-in for the network. Target: relative L2 error below 1e-5.

use candle_core::{DType, Device, Tensor};
use latent_engine::Result;
use latent_engine::rng::TorchRng;
use latent_engine::sampling::denoiser::{Denoise, c_in};
use latent_engine::sampling::schedule::{self, Convention, ModelSchedule, RunSchedule, ScheduleKind};
use latent_engine::sampling::{default_params, solver_fn, solver_info};
use latent_tests::{fixture, rel_l2};

const TOL: f64 = 1e-5;

/// eps(x, t) = 0.8 tanh(x (0.5 + t / 2000)) + 0.1 cos(t / 100), on the input-scaled sample.
struct Analytic<'a> {
    run: &'a RunSchedule,
    model: &'a ModelSchedule,
    evals: usize,
}

impl Denoise for Analytic<'_> {
    fn x0(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor> {
        self.evals += 1;
        let t = self.timestep(sigma);
        let xin = (x * c_in(sigma))?;
        let eps = (((xin * (0.5 + t / 2000.0))?.tanh()? * 0.8)? + 0.1 * (t / 100.0).cos())?;
        Ok((x - (eps * sigma)?)?)
    }
    fn timestep(&self, sigma: f64) -> f64 {
        self.run
            .sigmas
            .iter()
            .zip(&self.run.timesteps)
            .find(|(s, _)| **s == sigma)
            .map(|(_, t)| *t)
            .unwrap_or_else(|| self.model.sigma_to_t_diffusers(sigma))
    }
    fn sigma_for_timestep(&self, t: f64) -> f64 {
        self.model.sigma_at(t)
    }
    fn step_done(&mut self, _: usize, _: &Tensor, _: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

struct Case {
    name: &'static str,
    solver: &'static str,
    steps: usize,
    kind: ScheduleKind,
    convention: Option<Convention>,
    eta: Option<f64>,
    /// SD's schedule rescaled to zero terminal SNR.
    zero_snr: bool,
}

const fn case(name: &'static str, solver: &'static str, steps: usize) -> Case {
    Case {
        name,
        solver,
        steps,
        kind: ScheduleKind::Default,
        convention: None,
        eta: None,
        zero_snr: false,
    }
}

fn check(c: &Case, reference: &std::collections::HashMap<String, Tensor>) -> f64 {
    let model = ModelSchedule::for_model(c.zero_snr);
    let info = solver_info(c.solver).expect("registered");
    let run = schedule::build(&model, c.convention.unwrap_or(info.convention), c.kind, c.steps, false);
    let mut rng = TorchRng::new(0);
    let noise = Tensor::from_vec(rng.randn_f64(256), (1, 4, 8, 8), &Device::Cpu).expect("noise");
    let x = (noise * run.init_noise_sigma).expect("scale");
    let mut params = default_params(info);
    if let Some(eta) = c.eta {
        params.eta = eta;
    }
    let mut d = Analytic {
        run: &run,
        model: &model,
        evals: 0,
    };
    let out = solver_fn(c.solver).expect("fn")(&mut d, x, &run.sigmas, &params, &mut rng).expect("solve");
    let last = *run.sigmas.last().expect("sigmas");
    let out = (out * c_in(last)).expect("to the network's coordinates");
    let want = reference.get(c.name).unwrap_or_else(|| panic!("no reference for {}", c.name));
    let err = rel_l2(&out, &want.to_dtype(DType::F64).expect("f64"));
    println!("{:16} {:14} rel L2 {err:.2e}, {} evaluations", c.name, c.solver, d.evals);
    err
}

#[test]
fn solvers_match_diffusers_schedulers() {
    let reference = candle_core::safetensors::load(fixture("solvers/reference.safetensors"), &Device::Cpu).expect("fixture");
    let min = Some(Convention::Multistep { final_zero: false });
    let cases = [
        case("ddim", "ddim", 10),
        Case {
            eta: Some(0.5),
            ..case("ddim-eta", "ddim", 10)
        },
        case("euler", "euler", 10),
        Case {
            kind: ScheduleKind::Karras,
            ..case("euler-karras", "euler", 10)
        },
        Case {
            kind: ScheduleKind::Exponential,
            ..case("euler-exponential", "euler", 10)
        },
        Case {
            kind: ScheduleKind::Beta,
            ..case("euler-beta", "euler", 10)
        },
        Case {
            kind: ScheduleKind::Discrete(schedule::Spacing::Trailing),
            ..case("euler-trailing", "euler", 10)
        },
        case("euler-a", "euler-a", 10),
        case("heun", "heun", 10),
        case("lms", "lms", 10),
        case("dpm-solver-1", "dpm-solver-1", 10),
        case("dpm-solver-2", "dpm-solver-2", 10),
        case("dpm-solver-3", "dpm-solver-3", 10),
        case("dpm++2m", "dpm++2m", 10),
        case("dpm++2m-20", "dpm++2m", 20),
        Case {
            kind: ScheduleKind::Karras,
            ..case("dpm++2m-karras", "dpm++2m", 10)
        },
        case("dpm++3m", "dpm++3m", 10),
        case("dpm++2m-sde", "dpm++2m-sde", 10),
        Case {
            kind: ScheduleKind::Karras,
            ..case("dpm++2m-sde-karras", "dpm++2m-sde", 10)
        },
        case("unipc", "unipc", 10),
        Case {
            convention: min,
            ..case("unipc-bh1", "unipc-bh1", 10)
        },
        case("dpm2", "dpm2", 10),
        case("dpm2-a", "dpm2-a", 10),
        case("plms", "plms", 10),
        case("deis", "deis", 10),
        case("dpm++2s", "dpm++2s", 10),
        case("lcm", "lcm", 4),
        case("tcd", "tcd", 4),
        case("ddpm", "ddpm", 10),
        Case {
            zero_snr: true,
            ..case("euler-zsnr", "euler", 10)
        },
        Case {
            zero_snr: true,
            kind: ScheduleKind::Discrete(schedule::Spacing::Trailing),
            ..case("euler-zsnr-trailing", "euler", 10)
        },
        Case {
            zero_snr: true,
            ..case("dpm++2m-zsnr", "dpm++2m", 10)
        },
        Case {
            zero_snr: true,
            kind: ScheduleKind::Karras,
            ..case("dpm++2m-zsnr-karras", "dpm++2m", 10)
        },
    ];
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|c| {
            let err = check(c, &reference);
            (err.is_nan() || err >= TOL).then(|| format!("{}: {err:.3e}", c.name))
        })
        .collect();
    assert!(failures.is_empty(), "above {TOL:e}: {failures:?}");
}

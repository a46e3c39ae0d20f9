//! Noise schedules: the model's training schedule and the sigmas a run visits.
//!
//! Values follow diffusers exactly where it matters for parity: betas from a float32
//! `linspace` squared in float32, `alphas_cumprod` accumulated in double and stored as float32
//! (torch's CPU cumprod), sigmas computed in float32 and interpolated in double.

/// The model's discrete training schedule (SD's `scaled_linear`, 1000 steps).
#[derive(Clone, Debug)]
pub struct ModelSchedule {
    pub alphas_cumprod: Vec<f64>,
    /// `sqrt((1 - a) / a)` per training timestep, ascending.
    pub sigmas: Vec<f64>,
}

/// torch.linspace for float32, which fills the two halves from opposite ends.
fn torch_linspace_f32(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let halfway = steps / 2;
    (0..steps)
        .map(|i| {
            if i < halfway {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

impl ModelSchedule {
    /// Stable Diffusion's schedule: `scaled_linear` betas from 0.00085 to 0.012 over 1000 steps.
    pub fn stable_diffusion() -> Self {
        Self::scaled_linear(0.00085, 0.012, 1000)
    }

    /// A `scaled_linear` schedule.
    pub fn scaled_linear(beta_start: f64, beta_end: f64, steps: usize) -> Self {
        let lin = torch_linspace_f32(beta_start.sqrt() as f32, beta_end.sqrt() as f32, steps);
        let mut acc = 1.0f64;
        let mut alphas_cumprod = Vec::with_capacity(steps);
        for b in lin {
            let beta = b * b;
            let alpha = 1.0f32 - beta;
            acc *= alpha as f64;
            alphas_cumprod.push(acc as f32 as f64);
        }
        Self::from_alphas_cumprod(alphas_cumprod)
    }

    /// The schedule of these `alpha_bar` values, with sigmas computed in float32 as diffusers.
    fn from_alphas_cumprod(alphas_cumprod: Vec<f64>) -> Self {
        let sigmas = alphas_cumprod
            .iter()
            .map(|&a| {
                let a = a as f32;
                (((1.0f32 - a) / a).sqrt()) as f64
            })
            .collect();
        Self { alphas_cumprod, sigmas }
    }

    /// The same schedule rescaled to zero terminal SNR (Lin et al. 2023, diffusers'
    /// `rescale_betas_zero_snr`): `sqrt(alpha_bar)` shifted so the last timestep carries no
    /// signal at all and scaled so the first is unchanged. With SD's schedule the last
    /// timestep otherwise keeps 6.8% of the image (`sqrt(alpha_bar) = 0.068`): a model learns
    /// to read the layout from that leak, and at generation, which starts from pure noise,
    /// reads one from the seed instead of the prompt. The last `alpha_bar` is then set to
    /// 2^-24 as diffusers does, so its sigma is 4096 rather than infinite.
    pub fn zero_terminal_snr(&self) -> Self {
        let root: Vec<f64> = self.alphas_cumprod.iter().map(|a| a.sqrt()).collect();
        let (first, last) = (root[0], root[root.len() - 1]);
        let mut alphas_cumprod: Vec<f64> = root
            .iter()
            .map(|r| {
                let v = (r - last) * first / (first - last);
                (v * v) as f32 as f64
            })
            .collect();
        if let Some(l) = alphas_cumprod.last_mut() {
            *l = 2f64.powi(-24);
        }
        Self::from_alphas_cumprod(alphas_cumprod)
    }

    /// The training schedule of a model: SD's, rescaled to zero terminal SNR when the model
    /// says it was trained that way.
    pub fn for_model(zero_terminal_snr: bool) -> Self {
        let sd = Self::stable_diffusion();
        if zero_terminal_snr { sd.zero_terminal_snr() } else { sd }
    }

    /// Number of training timesteps.
    pub fn len(&self) -> usize {
        self.sigmas.len()
    }
    /// Never true for a real schedule.
    pub fn is_empty(&self) -> bool {
        self.sigmas.is_empty()
    }

    /// Sigma at a (possibly fractional) timestep, linearly interpolated as diffusers does.
    pub fn sigma_at(&self, t: f64) -> f64 {
        let last = (self.len() - 1) as f64;
        let t = t.clamp(0.0, last);
        let lo = t.floor() as usize;
        let hi = (lo + 1).min(self.len() - 1);
        let frac = t - lo as f64;
        self.sigmas[lo] * (1.0 - frac) + self.sigmas[hi] * frac
    }

    /// The timestep whose sigma is `sigma` (log-sigma interpolation, as k-diffusion), for
    /// solvers that evaluate between the listed steps.
    pub fn t_for_sigma(&self, sigma: f64) -> f64 {
        let ls = sigma.max(1e-10).ln();
        let logs: Vec<f64> = self.sigmas.iter().map(|s| s.ln()).collect();
        if ls <= logs[0] {
            return 0.0;
        }
        let n = logs.len();
        if ls >= logs[n - 1] {
            return (n - 1) as f64;
        }
        let hi = logs.iter().position(|&l| l >= ls).unwrap_or(n - 1).max(1);
        let lo = hi - 1;
        let w = (logs[lo] - ls) / (logs[lo] - logs[hi]);
        lo as f64 + w
    }
}

/// How the listed timesteps are spread over the training range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Spacing {
    /// `arange(0, n) * (T // n) + offset`, reversed (DDIM/PNDM in SD's scheduler config).
    Leading,
    /// `linspace(0, T - 1, n)`, reversed (diffusers' Euler default).
    Linspace,
    /// `round(arange(T, 0, -T / n)) - 1` (ends exactly at T - 1; SD-Turbo, "zero-SNR" papers).
    Trailing,
}

/// The timesteps of an `n`-step run, descending.
pub fn timesteps(spacing: Spacing, n: usize, train_steps: usize) -> Vec<f64> {
    match spacing {
        Spacing::Leading => {
            let ratio = train_steps / n.max(1);
            (0..n).rev().map(|i| (i * ratio + 1) as f64).collect()
        }
        // diffusers' linspace with one step lands on t = 0 (pure noise comes out); a single
        // step starts at the top, as trailing spacing does.
        Spacing::Linspace if n == 1 => vec![(train_steps - 1) as f64],
        Spacing::Linspace => {
            let lin = torch_np_linspace_f32(0.0, (train_steps - 1) as f64, n);
            lin.into_iter().rev().collect()
        }
        Spacing::Trailing => {
            let step = train_steps as f64 / n as f64;
            (0..n)
                .map(|i| ((train_steps as f64 - i as f64 * step).round() - 1.0) as f32 as f64)
                .collect()
        }
    }
}

/// numpy's `linspace(start, stop, n, dtype=float32)`: computed in double, stored as float.
fn torch_np_linspace_f32(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start as f32 as f64];
    }
    let step = (stop - start) / (n - 1) as f64;
    (0..n)
        .map(|i| if i == n - 1 { stop } else { start + i as f64 * step })
        .map(|v| v as f32 as f64)
        .collect()
}

/// The sigmas and timesteps of one run.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSchedule {
    /// `n + 1` sigmas; the last is 0, or the model's smallest sigma for DDIM-style endings.
    pub sigmas: Vec<f64>,
    /// The network timestep of each of the first `n` sigmas.
    pub timesteps: Vec<f64>,
    /// Scale of the initial noise (in the sigma parameterisation used by the solvers).
    pub init_noise_sigma: f64,
}

/// How a run's sigmas are chosen (the user's "schedule" picker).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleKind {
    /// What the solver's diffusers scheduler does by default.
    Default,
    /// The model's discrete timesteps with this spacing.
    Discrete(Spacing),
    /// Karras et al. (rho = 7) between the model's smallest and largest sigma.
    Karras,
    /// Evenly spaced in log-sigma.
    Exponential,
    /// Evenly spaced timesteps, end excluded (k-diffusion/ComfyUI "sgm_uniform").
    SgmUniform,
    /// ComfyUI's "simple": every (T/n)-th training sigma from the top.
    Simple,
    /// Beta-distribution spacing (Lee et al. 2024, alpha = beta = 0.6), as diffusers'
    /// `use_beta_sigmas` and ComfyUI's "beta".
    Beta,
    /// Align Your Steps (Sabour et al. 2024): NVIDIA's published 10-step tables for SD 1.5 and
    /// SDXL, log-linearly interpolated to the step count.
    AlignYourSteps,
}

/// Every schedule name the CLI accepts, with a one-line description.
pub const SCHEDULES: &[(&str, &str)] = &[
    ("default", "the solver's own diffusers default"),
    ("leading", "discrete timesteps, leading spacing (DDIM, PNDM)"),
    ("linspace", "discrete timesteps, linspace spacing (Euler, DPM-Solver)"),
    (
        "trailing",
        "discrete timesteps, trailing spacing (starts at t=999; Turbo, zero-SNR)",
    ),
    ("karras", "Karras et al. rho=7"),
    ("exponential", "evenly spaced in log sigma"),
    ("beta", "beta-distribution quantiles, alpha = beta = 0.6 (more steps at both ends)"),
    ("sgm-uniform", "evenly spaced timesteps, end excluded (ComfyUI sgm_uniform)"),
    ("simple", "every (T/n)-th training sigma (ComfyUI simple)"),
    ("ays", "Align Your Steps tables (SD 1.x/2.x and SDXL), interpolated"),
];

impl ScheduleKind {
    /// Parses a CLI name.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "default" | "automatic" => Self::Default,
            "leading" => Self::Discrete(Spacing::Leading),
            "linspace" | "discrete" | "normal" => Self::Discrete(Spacing::Linspace),
            "trailing" => Self::Discrete(Spacing::Trailing),
            "karras" => Self::Karras,
            "exponential" => Self::Exponential,
            "beta" => Self::Beta,
            "sgm-uniform" | "sgm_uniform" => Self::SgmUniform,
            "simple" => Self::Simple,
            "ays" | "align-your-steps" => Self::AlignYourSteps,
            _ => return None,
        })
    }
    /// The name A1111 writes as `Schedule type`.
    pub fn a1111(self) -> &'static str {
        match self {
            Self::Default => "Automatic",
            Self::Discrete(_) => "Normal",
            Self::Karras => "Karras",
            Self::Exponential => "Exponential",
            Self::Beta => "Beta",
            Self::SgmUniform => "SGM Uniform",
            Self::Simple => "Simple",
            Self::AlignYourSteps => "Align Your Steps",
        }
    }
}

/// Which diffusers scheduler's `set_timesteps` a solver follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Convention {
    /// Euler, Euler a, Heun, DPM2, LMS: float timesteps, sigmas interpolated, run ends at 0,
    /// noise starts at sigma_max (sqrt(sigma_max^2 + 1) for leading spacing).
    Karras,
    /// DPM-Solver(++), UniPC, DEIS: integer timesteps from `n + 1` points; unit-variance start.
    Multistep { final_zero: bool },
    /// DDIM, PNDM: leading spacing with offset 1, ends at the first training sigma.
    Ddim,
    /// DDPM: leading spacing without offset, ends at 0.
    Ddpm,
    /// LCM: every (T/50)-th timestep subsampled, ends at 0.
    Lcm,
    /// TCD: LCM's timesteps, ends at the first training sigma.
    Tcd,
}

fn karras(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let rho = 7.0;
    let (min_inv, max_inv) = (sigma_min.powf(1.0 / rho), sigma_max.powf(1.0 / rho));
    (0..n)
        .map(|i| {
            let ramp = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
            (max_inv + ramp * (min_inv - max_inv)).powf(rho)
        })
        .collect()
}

/// ln Gamma by Lanczos (g = 7), accurate to ~1e-15 for positive arguments.
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let t = x + 7.5;
    let sum: f64 = C[0] + C.iter().skip(1).enumerate().map(|(i, c)| c / (x + i as f64 + 1.0)).sum::<f64>();
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

/// Regularised incomplete beta I_x(a, b) (continued fraction, Lentz's method).
fn beta_cdf(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    if x > (a + 1.0) / (a + b + 2.0) {
        return 1.0 - beta_cdf(1.0 - x, b, a);
    }
    let front = (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp() / a;
    let tiny = 1e-300;
    let (mut f, mut c, mut d) = (1.0, 1.0, 0.0);
    for i in 0..400 {
        let m = (i / 2) as f64;
        let num = if i == 0 {
            1.0
        } else if i % 2 == 0 {
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m))
        } else {
            -((a + m) * (a + b + m) * x) / ((a + 2.0 * m) * (a + 2.0 * m + 1.0))
        };
        d = 1.0 + num * d;
        d = if d.abs() < tiny { tiny } else { d };
        d = 1.0 / d;
        c = 1.0 + num / c;
        c = if c.abs() < tiny { tiny } else { c };
        let cd = c * d;
        f *= cd;
        if (1.0 - cd).abs() < 1e-15 {
            break;
        }
    }
    front * (f - 1.0)
}

/// Quantile of the Beta(a, b) distribution (bisection on the CDF to double precision).
pub fn beta_ppf(q: f64, a: f64, b: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if beta_cdf(mid, a, b) < q {
            lo = mid;
        } else {
            hi = mid;
        }
        if hi - lo < 1e-16 {
            break;
        }
    }
    0.5 * (lo + hi)
}

fn exponential(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    let (a, b) = (sigma_max.ln(), sigma_min.ln());
    (0..n)
        .map(|i| (a + (b - a) * if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 }).exp())
        .collect()
}

/// Align Your Steps, 10 steps (11 sigmas), as published for SD 1.5 and SDXL.
const AYS_SD1: [f64; 11] = [14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029];
const AYS_SDXL: [f64; 11] = [14.615, 6.315, 3.771, 2.181, 1.342, 0.862, 0.555, 0.380, 0.234, 0.113, 0.029];

fn loglinear_interp(table: &[f64], n: usize) -> Vec<f64> {
    // As ComfyUI: interpolate log sigma over [0, 1] on the ascending table.
    let ys: Vec<f64> = table.iter().rev().map(|s| s.ln()).collect();
    let m = ys.len();
    (0..n)
        .map(|i| {
            let x = if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 } * (m - 1) as f64;
            let lo = (x.floor() as usize).min(m - 2);
            let f = x - lo as f64;
            (ys[lo] * (1.0 - f) + ys[lo + 1] * f).exp()
        })
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect()
}

impl ModelSchedule {
    /// diffusers' `_sigma_to_t`: log-sigma interpolation against float32 log sigmas.
    pub fn sigma_to_t_diffusers(&self, sigma: f64) -> f64 {
        let logs: Vec<f64> = self.sigmas.iter().map(|s| (s.ln() as f32) as f64).collect();
        let ls = sigma.max(1e-10).ln();
        let n = logs.len();
        let low = logs.iter().filter(|&&l| ls - l >= 0.0).count().saturating_sub(1).min(n - 2);
        let (lo, hi) = (logs[low], logs[low + 1]);
        let w = ((lo - ls) / (lo - hi)).clamp(0.0, 1.0);
        (1.0 - w) * low as f64 + w * (low + 1) as f64
    }
}

fn round_half_even(v: f64) -> f64 {
    let r = v.round();
    if (v - v.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
        r - v.signum()
    } else {
        r
    }
}

/// Builds a run's schedule the way the solver's diffusers scheduler does, or with the kind
/// the user picked. `sdxl` picks the SDXL Align-Your-Steps table.
pub fn build(model: &ModelSchedule, convention: Convention, kind: ScheduleKind, n: usize, sdxl: bool) -> RunSchedule {
    let t_train = model.len();
    let f32r = |v: f64| v as f32 as f64;
    let vp_start = |sigmas: &Vec<f64>| (sigmas[0] * sigmas[0] + 1.0).sqrt();
    // Sigma lists for the non-discrete kinds (final value appended per convention below).
    let smin = model.sigmas[0];
    let smax = model.sigmas[t_train - 1];
    let special: Option<Vec<f64>> = match kind {
        ScheduleKind::Default | ScheduleKind::Discrete(_) => None,
        ScheduleKind::Karras => Some(match convention {
            // Euler-family schedulers take the ends of their spaced sigmas (linspace: t = 999..0).
            Convention::Karras => karras(f32r(model.sigma_at(0.0)), f32r(model.sigma_at((t_train - 1) as f64)), n),
            _ => karras(smin, smax, n),
        }),
        ScheduleKind::Exponential => Some(exponential(smin, smax, n)),
        ScheduleKind::Beta => Some(
            (0..n)
                .map(|i| {
                    let q = 1.0 - if n == 1 { 0.0 } else { i as f64 / (n - 1) as f64 };
                    smin + beta_ppf(q, 0.6, 0.6) * (smax - smin)
                })
                .collect(),
        ),
        ScheduleKind::SgmUniform => {
            let (a, b) = (model.sigma_to_t_diffusers(smax), model.sigma_to_t_diffusers(smin));
            Some((0..n).map(|i| model.sigma_at(a + (b - a) * i as f64 / n as f64)).collect())
        }
        ScheduleKind::Simple => {
            let ss = t_train as f64 / n as f64;
            Some((0..n).map(|i| model.sigmas[t_train - 1 - (i as f64 * ss) as usize]).collect())
        }
        ScheduleKind::AlignYourSteps => {
            let table = if sdxl { &AYS_SDXL } else { &AYS_SD1 };
            let mut s = if n == 10 { table.to_vec() } else { loglinear_interp(table, n + 1) };
            s.pop();
            Some(s)
        }
    };
    if let Some(sig) = special {
        let sigmas: Vec<f64> = sig.iter().map(|&s| f32r(s)).collect();
        let round_t = matches!(convention, Convention::Multistep { .. }) && kind == ScheduleKind::Karras;
        let timesteps: Vec<f64> = sigmas
            .iter()
            .map(|&s| {
                let t = model.sigma_to_t_diffusers(s);
                if round_t { round_half_even(t) } else { f32r(t) }
            })
            .collect();
        let ends_above_min = sigmas.last().is_some_and(|&l| l > smin * 1.0001);
        let last = match convention {
            Convention::Ddim | Convention::Tcd | Convention::Multistep { final_zero: false } if ends_above_min => f32r(smin),
            // Lists that already end at sigma_min finish at 0 rather than repeat it.
            _ => 0.0,
        };
        let mut all = sigmas;
        all.push(last);
        let init = match convention {
            Convention::Karras => all[0],
            _ => vp_start(&all),
        };
        return RunSchedule {
            sigmas: all,
            timesteps,
            init_noise_sigma: init,
        };
    }
    let spacing_of = |default: Spacing| match kind {
        ScheduleKind::Discrete(s) => s,
        _ => default,
    };
    match convention {
        Convention::Karras => RunSchedule::discrete(model, spacing_of(Spacing::Linspace), n),
        Convention::Ddim => RunSchedule::ddim(model, spacing_of(Spacing::Leading), n),
        Convention::Multistep { final_zero } => {
            let ts: Vec<f64> = match spacing_of(Spacing::Linspace) {
                Spacing::Linspace => {
                    let last = (t_train - 1) as f64;
                    (0..=n).map(|i| round_half_even(last * i as f64 / n as f64)).rev().take(n).collect()
                }
                Spacing::Leading => {
                    let ratio = t_train / (n + 1);
                    (0..=n).map(|i| (i * ratio) as f64).rev().take(n).collect()
                }
                Spacing::Trailing => timesteps(Spacing::Trailing, n, t_train),
            };
            // As diffusers' multistep schedulers: with about as many steps as training steps
            // the rounded timesteps repeat; a repeated one would make a zero-length step
            // (and a division by zero in the multistep update), so each is kept once.
            let mut ts = ts;
            let mut seen = std::collections::HashSet::new();
            ts.retain(|t| seen.insert(t.to_bits()));
            let mut sigmas: Vec<f64> = ts.iter().map(|&t| f32r(model.sigma_at(t))).collect();
            sigmas.push(if final_zero { 0.0 } else { f32r(smin) });
            let init = vp_start(&sigmas);
            RunSchedule {
                sigmas,
                timesteps: ts,
                init_noise_sigma: init,
            }
        }
        Convention::Ddpm => {
            let ratio = t_train / n.max(1);
            let ts: Vec<f64> = match spacing_of(Spacing::Leading) {
                Spacing::Leading => (0..n).rev().map(|i| (i * ratio) as f64).collect(),
                other => timesteps(other, n, t_train),
            };
            let mut sigmas: Vec<f64> = ts.iter().map(|&t| model.sigma_at(t)).collect();
            sigmas.push(0.0);
            let init = vp_start(&sigmas);
            RunSchedule {
                sigmas,
                timesteps: ts,
                init_noise_sigma: init,
            }
        }
        Convention::Lcm | Convention::Tcd => {
            let origin_steps = 50usize;
            let k = t_train / origin_steps;
            let origin: Vec<usize> = (1..=origin_steps).map(|i| i * k - 1).rev().collect();
            let ts: Vec<f64> = (0..n)
                .map(|i| origin[((i as f64 * origin.len() as f64 / n as f64).floor() as usize).min(origin.len() - 1)] as f64)
                .collect();
            let mut sigmas: Vec<f64> = ts.iter().map(|&t| model.sigma_at(t)).collect();
            sigmas.push(if convention == Convention::Tcd { smin } else { 0.0 });
            let init = vp_start(&sigmas);
            RunSchedule {
                sigmas,
                timesteps: ts,
                init_noise_sigma: init,
            }
        }
    }
}

impl RunSchedule {
    /// Euler-family schedule as diffusers' `EulerDiscreteScheduler` builds it.
    pub fn discrete(model: &ModelSchedule, spacing: Spacing, n: usize) -> Self {
        let ts = timesteps(spacing, n, model.len());
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| model.sigma_at(t) as f32 as f64).collect();
        sigmas.push(0.0);
        // diffusers starts linspace/trailing runs at sigma_max and leading runs at
        // sqrt(sigma_max^2 + 1); keep its quirk so seeds reproduce.
        let init_noise_sigma = match spacing {
            Spacing::Linspace | Spacing::Trailing => sigmas[0],
            Spacing::Leading => (sigmas[0] * sigmas[0] + 1.0).sqrt(),
        };
        Self {
            sigmas,
            timesteps: ts,
            init_noise_sigma,
        }
    }

    /// DDIM's schedule: the same timesteps, but the run ends at the first training step's
    /// sigma (`set_alpha_to_one = False`), and noise starts at unit variance in the
    /// network's own (variance-preserving) coordinates.
    pub fn ddim(model: &ModelSchedule, spacing: Spacing, n: usize) -> Self {
        let ts = timesteps(spacing, n, model.len());
        let mut sigmas: Vec<f64> = ts.iter().map(|&t| model.sigma_at(t)).collect();
        // A schedule that already visits t = 0 (linspace) finishes at sigma 0 instead of
        // repeating the first training sigma.
        sigmas.push(if ts.last() == Some(&0.0) { 0.0 } else { model.sigmas[0] });
        let init_noise_sigma = (sigmas[0] * sigmas[0] + 1.0).sqrt();
        Self {
            sigmas,
            timesteps: ts,
            init_noise_sigma,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_terminal_snr_matches_diffusers() {
        // diffusers 0.42.1: rescale_zero_terminal_snr(scaled_linear betas) then cumprod
        // (float32), and EulerDiscreteScheduler(rescale_betas_zero_snr=True)'s 2^-24 at the end.
        let z = ModelSchedule::stable_diffusion().zero_terminal_snr();
        for (t, want) in [
            (0, 0.999_149_978_160_858_2),
            (1, 0.998_233_497_142_791_7),
            (10, 0.989_793_717_861_175_5),
            (100, 0.886_761_069_297_790_5),
            (500, 0.241_018_638_014_793_4),
            (900, 0.002_960_391_342_639_923),
            (990, 1.653_038_634_685_799_5e-5),
            (998, 1.967_963_356_719_337_8e-7),
        ] {
            // diffusers goes back to betas and multiplies them up again in float32; we rescale
            // alpha_bar directly: the same values to 3e-5 relative at the noisy end.
            let got = z.alphas_cumprod[t];
            assert!((got - want).abs() <= 1e-4 * want, "t {t}: {got} vs {want}");
        }
        assert_eq!(z.alphas_cumprod[999], 2f64.powi(-24));
        assert!((z.sigmas[999] - 4096.0).abs() < 0.01, "{}", z.sigmas[999]);
        // The untouched schedule keeps its leak.
        assert!(ModelSchedule::stable_diffusion().alphas_cumprod[999].sqrt() > 0.06);
    }

    #[test]
    fn sd_schedule_endpoints() {
        let s = ModelSchedule::stable_diffusion();
        assert_eq!(s.len(), 1000);
        assert!((s.sigmas[999] - 14.6146).abs() < 1e-3, "{}", s.sigmas[999]);
        assert!((s.sigmas[0] - 0.029168).abs() < 1e-5, "{}", s.sigmas[0]);
    }

    #[test]
    fn spacings() {
        assert_eq!(
            timesteps(Spacing::Leading, 10, 1000),
            vec![901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0]
        );
        assert_eq!(timesteps(Spacing::Trailing, 4, 1000), vec![999.0, 749.0, 499.0, 249.0]);
        let l = timesteps(Spacing::Linspace, 3, 1000);
        assert_eq!(l, vec![999.0, 499.5, 0.0]);
    }

    #[test]
    fn every_kind_gives_a_decreasing_schedule() {
        let m = ModelSchedule::stable_diffusion();
        let kinds = [
            ScheduleKind::Default,
            ScheduleKind::Discrete(Spacing::Leading),
            ScheduleKind::Discrete(Spacing::Linspace),
            ScheduleKind::Discrete(Spacing::Trailing),
            ScheduleKind::Karras,
            ScheduleKind::Exponential,
            ScheduleKind::Beta,
            ScheduleKind::SgmUniform,
            ScheduleKind::Simple,
            ScheduleKind::AlignYourSteps,
        ];
        let conventions = [
            Convention::Karras,
            Convention::Multistep { final_zero: true },
            Convention::Multistep { final_zero: false },
            Convention::Ddim,
            Convention::Ddpm,
            Convention::Lcm,
            Convention::Tcd,
        ];
        for kind in kinds {
            for conv in conventions {
                for n in [1usize, 2, 4, 10, 25] {
                    let r = build(&m, conv, kind, n, false);
                    assert_eq!(r.sigmas.len(), n + 1, "{kind:?} {conv:?} {n}");
                    assert_eq!(r.timesteps.len(), n, "{kind:?} {conv:?} {n}");
                    assert!(
                        r.sigmas.windows(2).all(|w| w[0] > w[1] || (w[1] == 0.0 && w[0] > 0.0)),
                        "{kind:?} {conv:?} {n}: {:?}",
                        r.sigmas
                    );
                    assert!(r.sigmas[0] <= 14.62 && r.sigmas[0] > 0.02 && r.init_noise_sigma >= r.sigmas[0] * 0.999);
                    assert!(r.timesteps.iter().all(|t| (0.0..=999.0).contains(t)));
                }
            }
        }
        let ays = build(&m, Convention::Karras, ScheduleKind::AlignYourSteps, 10, false);
        assert_eq!(
            &ays.sigmas[..10],
            &AYS_SD1[..10].iter().map(|s| *s as f32 as f64).collect::<Vec<_>>()[..]
        );
    }

    /// About as many steps as training steps: the Euler-family and multistep schedules may not
    /// repeat a sigma (a zero-length step divides by zero in the multistep solvers: DPM++ 2M
    /// at 1000 steps gave NaN). DDIM's leading spacing may (a no-op step, no division).
    #[test]
    fn very_long_runs_never_repeat_a_sigma() {
        let m = ModelSchedule::stable_diffusion();
        for conv in [
            Convention::Karras,
            Convention::Multistep { final_zero: true },
            Convention::Multistep { final_zero: false },
        ] {
            for kind in [
                ScheduleKind::Default,
                ScheduleKind::Karras,
                ScheduleKind::Discrete(Spacing::Trailing),
            ] {
                for n in [500usize, 999, 1000] {
                    let r = build(&m, conv, kind, n, false);
                    assert!(r.sigmas.len() > n * 9 / 10, "{kind:?} {conv:?} {n}: only {} sigmas", r.sigmas.len());
                    assert_eq!(r.timesteps.len() + 1, r.sigmas.len());
                    // The last step may stay at sigma_min (diffusers' trailing spacing ends
                    // on t = 0 there too): a first-order step of length zero, harmless.
                    let k = r.sigmas.len() - 1;
                    assert!(
                        r.sigmas[..k].windows(2).all(|w| w[0] > w[1]),
                        "{kind:?} {conv:?} {n} repeats a sigma"
                    );
                }
            }
        }
    }

    #[test]
    fn beta_quantiles_match_scipy() {
        // scipy.stats.beta.ppf(q, 0.6, 0.6)
        for (q, want) in [
            (0.1, 0.039_584_405_588_780_85),
            (0.25, 0.175_680_378_652_694_98),
            (0.75, 0.824_319_621_347_305),
            (0.9, 0.960_415_594_411_219_2),
        ] {
            let got = beta_ppf(q, 0.6, 0.6);
            assert!((got - want).abs() < 1e-12, "{q}: {got} vs {want}");
        }
    }

    #[test]
    fn t_for_sigma_inverts_sigma_at() {
        let s = ModelSchedule::stable_diffusion();
        for t in [0.0, 10.0, 500.0, 998.0] {
            assert!((s.t_for_sigma(s.sigma_at(t)) - t).abs() < 1e-6);
        }
    }
}

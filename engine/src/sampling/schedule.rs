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
        let sigmas = alphas_cumprod
            .iter()
            .map(|&a| {
                let a = a as f32;
                (((1.0f32 - a) / a).sqrt()) as f64
            })
            .collect();
        Self {
            alphas_cumprod,
            sigmas,
        }
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
        .map(|i| {
            if i == n - 1 {
                stop
            } else {
                start + i as f64 * step
            }
        })
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

impl RunSchedule {
    /// Euler-family schedule as diffusers' `EulerDiscreteScheduler` builds it.
    pub fn discrete(model: &ModelSchedule, spacing: Spacing, n: usize) -> Self {
        let ts = timesteps(spacing, n, model.len());
        let mut sigmas: Vec<f64> = ts
            .iter()
            .map(|&t| model.sigma_at(t) as f32 as f64)
            .collect();
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
        sigmas.push(model.sigmas[0]);
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
            vec![
                901.0, 801.0, 701.0, 601.0, 501.0, 401.0, 301.0, 201.0, 101.0, 1.0
            ]
        );
        assert_eq!(
            timesteps(Spacing::Trailing, 4, 1000),
            vec![999.0, 749.0, 499.0, 249.0]
        );
        let l = timesteps(Spacing::Linspace, 3, 1000);
        assert_eq!(l, vec![999.0, 499.5, 0.0]);
    }

    #[test]
    fn t_for_sigma_inverts_sigma_at() {
        let s = ModelSchedule::stable_diffusion();
        for t in [0.0, 10.0, 500.0, 998.0] {
            assert!((s.t_for_sigma(s.sigma_at(t)) - t).abs() < 1e-6);
        }
    }
}

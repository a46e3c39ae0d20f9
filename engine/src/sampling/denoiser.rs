//! The denoiser: turns the network into `x0(x, sigma)` for the solvers.
//!
//! Solvers work in the "sigma" parameterisation `x = x0 + sigma * eps` (k-diffusion's); the
//! denoiser scales the input for the variance-preserving network (`c_in = 1/sqrt(sigma^2+1)`),
//! maps sigma to the network's timestep, applies classifier-free guidance and converts the
//! network's prediction (eps or v) into an estimate of the clean latent.

use candle_core::Tensor;

use crate::error::Result;

/// What solvers see: a denoiser and a per-step hook. Solvers never see the network, the
/// prompt or the device.
pub trait Denoise {
    /// Estimate of the clean sample at noise level `sigma`; checks for cancellation first.
    fn x0(&mut self, x: &Tensor, sigma: f64) -> Result<Tensor>;
    /// The network timestep used at `sigma` (consistency models scale by it).
    fn timestep(&self, sigma: f64) -> f64;
    /// The model's sigma at a (training) timestep (TCD jumps to such levels).
    fn sigma_for_timestep(&self, t: f64) -> f64;
    /// Called by the solver when step `step` (1-based) of the run is complete, with the
    /// current sample and the latest clean estimate (for previews). A returned tensor
    /// replaces the sample the solver goes on from (inpainting blends the known region
    /// back in); `None` keeps it.
    fn step_done(&mut self, step: usize, x: &Tensor, x0: &Tensor) -> Result<Option<Tensor>>;
}

/// Input scaling of the variance-preserving network at `sigma`.
pub fn c_in(sigma: f64) -> f64 {
    1.0 / (sigma * sigma + 1.0).sqrt()
}

/// Turns a network output into `x0` for `x` at `sigma`.
pub fn prediction_to_x0(prediction: crate::protocol::Prediction, x: &Tensor, out: &Tensor, sigma: f64) -> Result<Tensor> {
    use crate::protocol::Prediction;
    Ok(match prediction {
        Prediction::Epsilon => (x - (out * sigma)?)?,
        Prediction::V => {
            let s2 = sigma * sigma + 1.0;
            ((x * (1.0 / s2))? - (out * (sigma / s2.sqrt()))?)?
        }
    })
}

/// Classifier-free guidance: `uncond + scale * (cond - uncond)`.
pub fn cfg(uncond: &Tensor, cond: &Tensor, scale: f64) -> Result<Tensor> {
    Ok((uncond + ((cond - uncond)? * scale)?)?)
}

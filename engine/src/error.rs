//! The engine's one error type: every failure a user can cause ends here as a readable message.

use std::path::PathBuf;

/// Everything that can go wrong in the engine, phrased for the person who caused it.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "{path} is a pickle checkpoint ({kind}); pickle files can run arbitrary code, so Latent \
         Studio does not load them. Convert it to .safetensors first (for example with the \
         'convert to safetensors' tool of A1111/ComfyUI, or `safetensors.torch.save_file`)"
    )]
    PickleRefused { path: PathBuf, kind: &'static str },
    #[error("{path} is not a valid safetensors file: {reason}")]
    BadSafetensors { path: PathBuf, reason: String },
    #[error("{path} is not a valid GGUF file: {reason}")]
    BadGguf { path: PathBuf, reason: String },
    #[error("unrecognised model: {0}")]
    UnknownArchitecture(String),
    #[error("checkpoint is missing tensor '{0}'")]
    MissingTensor(String),
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    #[error("no model is loaded; open a checkpoint first")]
    NoModel,
    #[error("the computation produced NaN or infinite values ({0}); try another dtype (f32) or fewer steps")]
    NonFinite(&'static str),
    #[error("device '{0}' is not available in this build")]
    DeviceUnavailable(String),
    #[error("cancelled at step {at_step}")]
    Cancelled { at_step: u32 },
    #[error("tensor error: {0}")]
    Tensor(String),
    #[error("{0}")]
    Other(String),
}

/// Result alias for the engine.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

impl From<candle_core::Error> for EngineError {
    /// Keeps candle's message, without the backtrace it attaches when `RUST_BACKTRACE` is set.
    fn from(e: candle_core::Error) -> Self {
        let mut e = &e;
        while let candle_core::Error::WithBacktrace { inner, .. } = e {
            e = inner;
        }
        EngineError::Tensor(e.to_string().lines().next().unwrap_or_default().to_string())
    }
}

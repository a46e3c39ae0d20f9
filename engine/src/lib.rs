//! Latent Studio's engine: loads Stable Diffusion checkpoints and generates images on a
//! background thread, talking to its caller only through [`protocol`] messages.
//!
//! No GUI, no async runtime in the API. Start with [`handle::EngineHandle::spawn`], or drive
//! a [`pipeline::Pipeline`] directly for headless work.

pub mod checkpoint;
pub mod error;
pub mod handle;
pub mod image_io;
pub mod kernels;
pub mod lora;
pub mod metadata;
pub mod nets;
pub mod pipeline;
pub mod preview;
pub mod profile;
pub mod prompt;
pub mod protocol;
pub mod rng;
pub mod sampling;
pub mod tokenizer;
pub mod train;
pub mod worker;

pub use error::{EngineError, Result};
pub use handle::{EngineConfig, EngineHandle};
pub use protocol::*;

//! Checkpoint reading, architecture inference, name conversion and the three networks.

pub mod attention;
pub mod checkpoint;
pub mod clip;
pub mod config;
pub mod convert;
pub mod cpu_conv;
pub mod cpu_grad;
pub mod cpu_norm;
#[cfg(feature = "cuda")]
pub mod cuda_ops;
pub mod layers;
pub mod synthetic;
pub mod tome;
pub mod unet;
pub mod vae;

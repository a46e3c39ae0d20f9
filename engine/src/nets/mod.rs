//! The networks, built from [`weights::Weights`] and a [`config::ModelConfig`]: CLIP text
//! encoders, the UNet (with the feature cache and token merging), the VAE decoder, and the
//! layers they share. Nets never read files (that is [`crate::checkpoint`]) and call
//! [`crate::kernels`] for the hot loops. Tiny decoders and upscalers will join here.

pub mod clip;
pub mod config;
pub mod esrgan;
pub mod layers;
pub mod shapes;
pub mod taesd;
pub mod tome;
pub mod unet;
pub mod vae;
pub mod weights;

//! The pieces the embedded model is trained with: the VAE encoder against diffusers.

use candle_core::{DType, Device};
use latent_engine::checkpoint::{self, architecture};
use latent_engine::nets::vae::VaeEncoder;
use latent_tests::{fixture, layouts, rel_l2};

#[test]
fn vae_encoder_matches_diffusers() {
    let r = candle_core::safetensors::load(fixture("sd1/vae_encode.safetensors"), &Device::Cpu).expect("reference");
    for (layout, path) in layouts("sd1") {
        let w = checkpoint::load(&path, DType::F32, &Device::Cpu).expect("load");
        let cfg = architecture::infer(&w, "sd1").expect("config");
        let enc = VaeEncoder::new(&w, &cfg.vae).expect("encoder");
        let (mean, logvar) = enc.encode(&r["image"]).expect("encode");
        let (e_mean, e_logvar) = (rel_l2(&mean, &r["mean"]), rel_l2(&logvar, &r["logvar"]));
        assert!(
            e_mean < 1e-5 && e_logvar < 1e-5,
            "{layout}: mean {e_mean:.2e}, logvar {e_logvar:.2e}"
        );
    }
}

//! Tiny decoders (TAESD family) against diffusers' `AutoencoderTiny` on random weights
//! (`tests/fixtures/taesd/make_taesd_fixture.py`), in both layouts; as the preview decoder of a
//! generation; wrong files refused in one line.

use std::time::Duration;

use latent_engine::checkpoint::load_tiny_decoder;
use latent_engine::nets::taesd::TinyDecoder;
use latent_engine::pipeline::{Hooks, Pipeline};
use latent_engine::protocol::{ImageRgb8, ModelSpec};
use latent_tests::{fixture, rel_l2, tiny_request};

#[test]
fn both_layouts_decode_as_diffusers_autoencoder_tiny() {
    let r = candle_core::safetensors::load(fixture("taesd/reference.safetensors"), &candle_core::Device::Cpu).expect("reference");
    for layout in ["taesd/taesd_decoder.safetensors", "taesd/diffusers"] {
        let w = load_tiny_decoder(&fixture(layout), candle_core::DType::F32, &candle_core::Device::Cpu)
            .unwrap_or_else(|e| panic!("{layout}: {e}"));
        let d = TinyDecoder::new(&w).expect("build");
        let image = d.decode(&r["latents"]).expect("decode");
        assert_eq!(image.dims(), r["image"].dims());
        let e = rel_l2(&image, &r["image"]);
        assert!(e < 1e-5, "{layout}: rel L2 {e:.2e} against diffusers");
    }
}

struct Previews(Vec<(u32, u32)>);

impl Hooks for Previews {
    fn cancelled(&self) -> bool {
        false
    }
    fn progress(&mut self, _: u32, _: u32, _: Duration) {}
    fn wants_preview(&self, _: u32) -> bool {
        true
    }
    fn preview(&mut self, _: u32, image: ImageRgb8) {
        self.0.push((image.width, image.height));
    }
}

#[test]
fn previews_come_from_the_tiny_decoder_at_full_size() {
    let spec = ModelSpec {
        tiny_decoder: Some(fixture("taesd/taesd_decoder.safetensors")),
        ..ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))
    };
    let pipe = Pipeline::load(&spec).expect("load");
    let mut req = tiny_request("euler", 3, 3.0, 1);
    req.preview_every = 1;
    let job = pipe.validate(&req).expect("valid");
    let mut hooks = Previews(vec![]);
    let out = pipe.generate(&job, &mut hooks).expect("generate");
    // 64x64 images: latents 8x8 here (the tiny model's VAE has one upsampling), the tiny
    // decoder upsamples by 8 like TAESD.
    let (lh, lw) = (out.latents.shape[2] as u32, out.latents.shape[3] as u32);
    assert_eq!(hooks.0.len(), 3);
    assert!(hooks.0.iter().all(|&(w, h)| (w, h) == (lw * 8, lh * 8)), "{:?}", hooks.0);
    // Without one, previews are the latent projection at latent size.
    let plain = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let mut hooks = Previews(vec![]);
    plain.generate(&plain.validate(&req).expect("valid"), &mut hooks).expect("generate");
    assert!(hooks.0.iter().all(|&(w, h)| (w, h) == (lw, lh)), "{:?}", hooks.0);
}

#[test]
fn a_file_that_is_no_tiny_decoder_is_a_clear_error() {
    let spec = ModelSpec {
        tiny_decoder: Some(fixture("vae/tiny-vae.safetensors")),
        ..ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))
    };
    let err = Pipeline::load(&spec).err().expect("must fail").to_string();
    assert!(err.contains("tiny-vae.safetensors") && err.contains("not a tiny decoder"), "{err}");
}

//! VAE files beside a checkpoint (`--vae`, A1111's models/VAE): the three shapes users keep
//! them in decode exactly as diffusers' `AutoencoderKL` does with those weights
//! (`tests/fixtures/vae/make_vae_fixture.py`), the image's parameters name the VAE, and a file
//! that is no VAE is one clear error.

use latent_engine::pipeline::{Pipeline, Quiet};
use latent_engine::protocol::ModelSpec;
use latent_tests::{fixture, rel_l2, tiny_request};

fn with_vae(vae: &str) -> latent_engine::Result<Pipeline> {
    Pipeline::load(&ModelSpec {
        vae: Some(fixture(vae)),
        ..ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))
    })
}

#[test]
fn every_vae_layout_decodes_as_diffusers() {
    let r = candle_core::safetensors::load(fixture("vae/reference.safetensors"), &candle_core::Device::Cpu).expect("reference");
    let own = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let z = (&r["latents"] / own.config.vae.scaling_factor).expect("scale");
    let own_image = own.vae().decode(&z).expect("decode");
    assert!(
        rel_l2(&own_image, &r["image"]) > 0.1,
        "the fixture VAE must differ from the model's own"
    );
    // A1111's bare LDM names, the first_stage_model. prefix, a diffusers folder, and a
    // diffusers-named single file (how the SDXL fp16-fix VAE ships).
    for layout in [
        "vae/tiny-vae.safetensors",
        "vae/tiny-vae-fs.safetensors",
        "vae/diffusers",
        "vae/diffusers/diffusion_pytorch_model.safetensors",
    ] {
        let pipe = with_vae(layout).unwrap_or_else(|e| panic!("{layout}: {e}"));
        let image = pipe.vae().decode(&z).expect("decode");
        let e = rel_l2(&image, &r["image"]);
        assert!(e < 1e-5, "{layout}: rel L2 {e:.2e} against diffusers");
    }
}

#[test]
fn the_parameters_name_the_vae() {
    let pipe = with_vae("vae/tiny-vae.safetensors").expect("load");
    let job = pipe.validate(&tiny_request("euler", 3, 3.0, 1)).expect("valid");
    let out = pipe.generate(&job, &mut Quiet).expect("generate");
    assert!(out.metadata.contains("VAE: tiny-vae.safetensors"), "{}", out.metadata);
    let hash = latent_engine::metadata::Parameters::parse(&out.metadata).and_then(|p| p.get("VAE hash").map(str::to_string));
    assert_eq!(hash.map(|h| h.len()), Some(10), "{}", out.metadata);
    let plain = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let job = plain.validate(&tiny_request("euler", 3, 3.0, 1)).expect("valid");
    assert!(!plain.generate(&job, &mut Quiet).expect("generate").metadata.contains("VAE"));
}

#[test]
fn a_file_that_is_no_vae_is_a_clear_error() {
    let err = with_vae("lora/sd1-attnproc.safetensors").err().expect("must fail").to_string();
    assert!(err.contains("is not a VAE"), "{err}");
    let err = with_vae("vae/missing.safetensors").err().expect("must fail").to_string();
    assert!(err.contains("missing.safetensors"), "{err}");
}

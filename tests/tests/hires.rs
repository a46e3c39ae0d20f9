//! The hires fix: the first pass at the request's size, its latents enlarged (A1111's latent
//! upscalers), an image-to-image pass at the larger size; sizes, cost, metadata and bad
//! settings.

use latent_engine::pipeline::{Pipeline, Quiet};
use latent_engine::protocol::{Hires, HiresUpscaler, ModelSpec};
use latent_tests::{fixture, tiny_request};

#[test]
fn hires_fix_doubles_the_size_and_counts_both_passes() {
    let pipe = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let base = tiny_request("euler", 6, 3.0, 4);
    let plain = pipe.generate(&pipe.validate(&base).expect("valid"), &mut Quiet).expect("generate");
    for (upscaler, steps) in [(HiresUpscaler::Latent, 0), (HiresUpscaler::LatentNearest, 8)] {
        let mut req = base.clone();
        req.hires = Some(Hires {
            scale: 2.0,
            steps,
            strength: 0.5,
            upscaler,
        });
        let job = pipe.validate(&req).expect("valid");
        let out = pipe.generate(&job, &mut Quiet).expect("generate");
        assert_eq!((out.image.width, out.image.height), (128, 128));
        let second = (if steps == 0 { 6.0 } else { steps as f64 } * 0.5) as u32;
        assert_eq!(out.timings.nfe, 2 * (6 + second));
        assert_eq!(out.timings.nfe, pipe.nfe(&job));
        assert!(out.latents.data.iter().all(|v| v.is_finite()));
        for key in [
            "Hires upscale: 2",
            "Denoising strength: 0.5",
            &format!("Hires upscaler: {}", upscaler.name()),
            "Size: 64x64",
        ] {
            assert!(out.metadata.contains(key), "{key} missing: {}", out.metadata);
        }
        assert_eq!(out.metadata.contains("Hires steps: 8"), steps == 8, "{}", out.metadata);
        // A1111's keys restore the settings.
        let p = latent_engine::metadata::Parameters::parse(&out.metadata).expect("parse");
        assert_eq!(p.to_request(&base).hires, req.hires);
    }
    assert_eq!((plain.image.width, plain.image.height), (64, 64));
    assert!(!plain.metadata.contains("Hires"));
}

#[test]
fn bad_hires_settings_are_clear_errors() {
    let pipe = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let with = |scale: f64, strength: f64| {
        let mut r = tiny_request("euler", 6, 3.0, 4);
        r.hires = Some(Hires {
            scale,
            steps: 0,
            strength,
            upscaler: HiresUpscaler::Latent,
        });
        pipe.validate(&r).expect_err("must fail").to_string()
    };
    assert!(with(1.0, 0.5).contains("upscale"));
    assert!(with(8.0, 0.5).contains("upscale"));
    assert!(with(2.0, 1.5).contains("strength"));
    assert!(with(2.0, 0.05).contains("no step"));
}

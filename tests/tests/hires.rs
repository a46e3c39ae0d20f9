//! The hires fix: the first pass at the request's size, enlarged (A1111's latent upscalers,
//! or the decoded picture by Lanczos or an ESRGAN model, encoded again), an image-to-image
//! pass at the larger size; sizes, cost, metadata and bad settings.

use latent_engine::pipeline::{Pipeline, Quiet};
use latent_engine::protocol::{Hires, HiresUpscaler, ModelSpec};
use latent_tests::{fixture, tiny_request};

#[test]
fn hires_fix_doubles_the_size_and_counts_both_passes() {
    let pipe = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let base = tiny_request("euler", 6, 3.0, 4);
    let plain = pipe.generate(&pipe.validate(&base).expect("valid"), &mut Quiet).expect("generate");
    let esrgan = fixture("upscale/esrgan-x2.safetensors");
    let mut finals: Vec<Vec<f32>> = vec![];
    for (upscaler, steps, model) in [
        (HiresUpscaler::Latent, 0, None),
        (HiresUpscaler::LatentNearest, 8, None),
        (HiresUpscaler::LatentBicubicAntialiased, 0, None),
        (HiresUpscaler::Lanczos, 0, None),
        (HiresUpscaler::Model, 0, Some(esrgan.clone())),
    ] {
        let mut req = base.clone();
        req.hires = Some(Hires {
            scale: 2.0,
            steps,
            strength: 0.5,
            upscaler,
            model: model.clone(),
        });
        let name = req.hires.as_ref().map(Hires::upscaler_name).unwrap_or_default();
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
            &format!("Hires upscaler: {name}"),
            "Size: 64x64",
        ] {
            assert!(out.metadata.contains(key), "{key} missing: {}", out.metadata);
        }
        assert_eq!(out.metadata.contains("Hires steps: 8"), steps == 8, "{}", out.metadata);
        // A1111's keys restore the settings.
        let p = latent_engine::metadata::Parameters::parse(&out.metadata).expect("parse");
        let mut restored = p.to_request(&base).hires.expect("hires restored");
        if upscaler == HiresUpscaler::Model {
            // A model comes back by its name (A1111 writes the file's stem): the window and
            // the CLI look it up in their upscaler folders.
            assert_eq!(name, "esrgan-x2");
            assert_eq!(restored.model.as_deref(), Some(std::path::Path::new("esrgan-x2")));
            restored.model = model;
        }
        assert_eq!(Some(restored), req.hires);
        // Every upscaler gives its own second-pass start, so its own result.
        assert!(
            finals.iter().all(|f| f != &out.latents.data),
            "{name} gave the same latents as another upscaler"
        );
        finals.push(out.latents.data);
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
            model: None,
        });
        pipe.validate(&r).expect_err("must fail").to_string()
    };
    assert!(with(1.0, 0.5).contains("upscale"));
    assert!(with(8.0, 0.5).contains("upscale"));
    assert!(with(2.0, 1.5).contains("strength"));
    assert!(with(2.0, 0.05).contains("no step"));
}

#[test]
fn a_missing_or_foreign_upscaler_model_is_a_clear_error_and_the_engine_keeps_serving() {
    let pipe = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let with = |model: Option<std::path::PathBuf>| {
        let mut r = tiny_request("euler", 6, 3.0, 4);
        r.hires = Some(Hires {
            scale: 2.0,
            steps: 0,
            strength: 0.5,
            upscaler: HiresUpscaler::Model,
            model,
        });
        r
    };
    let none = pipe.validate(&with(None)).expect_err("no file").to_string();
    assert!(none.contains("needs its file"), "{none}");
    let missing = pipe.validate(&with(Some("4x-UltraSharp".into()))).expect_err("missing").to_string();
    assert!(missing.contains("4x-UltraSharp") && missing.contains("models/ESRGAN"), "{missing}");
    // A checkpoint is not an upscaler: the job fails after its first pass, with the reason.
    let foreign = with(Some(fixture("sd1/sd1-tiny.safetensors")));
    let err = pipe
        .generate(&pipe.validate(&foreign).expect("a file"), &mut Quiet)
        .expect_err("not an upscaler")
        .to_string();
    assert!(err.contains("not an ESRGAN-family upscaler"), "{err}");
    let ok = pipe.generate(&pipe.validate(&tiny_request("euler", 4, 3.0, 4)).expect("valid"), &mut Quiet);
    assert!(ok.is_ok(), "the next job runs");
}

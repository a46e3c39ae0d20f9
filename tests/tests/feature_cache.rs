//! The feature cache (DeepCache): a shallow UNet call reuses the deep features of the last
//! whole call. Checked on the tiny SD1/SD2/SDXL fixtures: the shallow path is wired exactly
//! (with deep features from the same input it reproduces the whole network), the pipeline
//! spends exactly the whole and shallow evaluations it plans, and bad intervals are refused.

use candle_core::Tensor;
use latent_engine::nets::unet::{DeepCache, UnetInput};
use latent_engine::pipeline::{Pipeline, request_nfe, request_whole_nfe};
use latent_engine::protocol::ModelSpec;
use latent_tests::{FAMILIES, Quiet, layouts, reference, reference_json, tiny_request};

fn max_abs(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .and_then(|d| d.abs())
        .and_then(|d| d.flatten_all())
        .and_then(|d| d.max(0))
        .and_then(|d| d.to_scalar::<f32>())
        .expect("difference")
}

#[test]
fn a_shallow_call_with_its_own_deep_features_is_the_whole_network() {
    for family in FAMILIES {
        let (_, path) = &layouts(family)[0];
        let pipe = Pipeline::load(&ModelSpec::new(path)).expect("load");
        let (r, j) = (reference(family), reference_json(family));
        let x = &r["unet.input"];
        let size = j["size"].as_f64().expect("size") as f32;
        let ids = Tensor::from_vec(vec![size, size, 0.0, 0.0, size, size], (1, 6), x.device()).expect("ids");
        let pooled = r.get("text.pooled_cond").cloned();
        let input = |t: &'static [f64]| UnetInput {
            sample: x,
            timesteps: t,
            context: &r["text.cond"],
            added: pooled.as_ref().map(|p| (p, &ids)),
            token_merge: 0.0,
        };
        let unet = pipe.unet();
        assert!(unet.caches_deep_features(), "{family}");
        let whole = unet.forward(&input(&[500.0])).expect("whole");
        let mut slot = None;
        let refreshed = unet
            .forward_cached(&input(&[500.0]), DeepCache::Refresh(&mut slot))
            .expect("refresh");
        assert_eq!(max_abs(&refreshed, &whole), 0.0, "{family}: keeping the features changes nothing");
        let deep = slot.expect("deep features kept");
        let shallow = unet.forward_cached(&input(&[500.0]), DeepCache::Reuse(&deep)).expect("shallow");
        assert_eq!(max_abs(&shallow, &whole), 0.0, "{family}: the shallow path is wired differently");
        // At another timestep the reused features are stale: a different (approximate) output.
        let later = unet.forward(&input(&[400.0])).expect("whole at 400");
        let reused = unet
            .forward_cached(&input(&[400.0]), DeepCache::Reuse(&deep))
            .expect("shallow at 400");
        let err = max_abs(&reused, &later);
        assert!(err > 0.0, "{family}: stale features gave the exact output");
    }
}

#[test]
fn the_pipeline_spends_the_whole_and_shallow_evaluations_it_plans() {
    let (_, path) = &layouts("sd1")[0];
    let pipe = Pipeline::load(&ModelSpec::new(path)).expect("load");
    let run = |req: &latent_engine::protocol::GenerateRequest| {
        let job = pipe.validate(req).expect("valid");
        pipe.generate(&job, &mut Quiet).expect("generate")
    };
    for (solver, steps, cfg, until, every) in [
        ("euler", 8, 3.0, 1.0, 3),
        ("dpm++2m", 10, 3.0, 0.5, 2),
        ("heun", 5, 3.0, 1.0, 2),
        ("unipc", 7, 1.0, 1.0, 4),
    ] {
        let mut req = tiny_request(solver, steps, cfg, 5);
        req.cfg_until = until;
        let plain = run(&req);
        assert_eq!(plain.timings.shallow_nfe, 0);
        req.feature_cache = every;
        let cached = run(&req);
        let case = format!("{solver}, {steps} steps, cfg {cfg} until {until}, every {every}");
        assert_eq!(Some(cached.timings.nfe), request_nfe(&req), "{case}");
        assert_eq!(
            Some(cached.timings.nfe - cached.timings.shallow_nfe),
            request_whole_nfe(&req),
            "{case}"
        );
        assert!(cached.timings.shallow_nfe > 0, "{case}");
        assert_ne!(cached.latents.data, plain.latents.data, "{case}: the cache changed nothing");
        assert!(cached.metadata.contains(&format!("Feature cache: {every}")), "{case}");
        // Interval 1 is the plain path, bit for bit.
        req.feature_cache = 1;
        assert_eq!(run(&req).latents.data, plain.latents.data, "{case}");
    }
}

#[test]
fn feature_cache_intervals_outside_the_range_are_refused() {
    let (_, path) = &layouts("sd1")[0];
    let pipe = Pipeline::load(&ModelSpec::new(path)).expect("load");
    for bad in [0, latent_engine::pipeline::MAX_FEATURE_CACHE + 1] {
        let mut req = tiny_request("euler", 4, 3.0, 1);
        req.feature_cache = bad;
        let err = pipe.validate(&req).expect_err("refused");
        assert!(err.to_string().contains("feature cache"), "{err}");
    }
}

#[test]
fn the_feature_cache_travels_in_the_image_parameters() {
    let mut req = tiny_request("euler", 4, 3.0, 1);
    req.feature_cache = 3;
    let (_, path) = &layouts("sd1")[0];
    let pipe = Pipeline::load(&ModelSpec::new(path)).expect("load");
    let out = pipe.generate(&pipe.validate(&req).expect("valid"), &mut Quiet).expect("generate");
    let p = latent_engine::metadata::Parameters::parse(&out.metadata).expect("parses");
    assert_eq!(p.to_request(&tiny_request("euler", 4, 3.0, 1)).feature_cache, 3);
}

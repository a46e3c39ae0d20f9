//! Token merging (ToMe for SD) against the `tomesd` package on diffusers' tiny SD1 UNet
//! (`fixtures/make_tome_fixture.py`: ratios 0.3 and 0.5, `use_rand=False`), and the request
//! path: validation, image parameters, and no effect at ratio 0.

use latent_engine::nets::unet::UnetInput;
use latent_engine::pipeline::{MAX_TOKEN_MERGE, Pipeline};
use latent_engine::protocol::ModelSpec;
use latent_tests::{Quiet, fixture, layouts, reference, rel_l2, tiny_request};

#[test]
fn merged_self_attention_matches_tomesd() {
    let r = reference("sd1");
    let want = candle_core::safetensors::load(fixture("sd1/tome.safetensors"), &candle_core::Device::Cpu).expect("tome fixture");
    for (layout, path) in layouts("sd1") {
        let pipe = Pipeline::load(&ModelSpec::new(&path)).expect("load");
        let run = |ratio: f64| {
            pipe.unet()
                .forward(&UnetInput {
                    sample: &r["unet.input"],
                    timesteps: &[500.0],
                    context: &r["text.cond"],
                    added: None,
                    token_merge: ratio,
                })
                .expect("unet")
        };
        let plain = run(0.0);
        for ratio in [0.3, 0.5] {
            let got = run(ratio);
            let err = rel_l2(&got, &want[&format!("unet.output.tome{ratio}")]);
            println!(
                "{layout}, ratio {ratio}: rel L2 {err:.2e} (change from no merging {:.3})",
                rel_l2(&got, &plain)
            );
            assert!(err < 1e-4, "{layout}, ratio {ratio}: relative L2 error {err:.3e}");
            assert!(rel_l2(&got, &plain) > 1e-3, "{layout}, ratio {ratio}: merging changed nothing");
        }
    }
}

#[test]
fn token_merging_is_validated_recorded_and_off_at_zero() {
    let (_, path) = &layouts("sd1")[0];
    let pipe = Pipeline::load(&ModelSpec::new(path)).expect("load");
    let run = |ratio: f64| {
        let mut req = tiny_request("euler", 4, 3.0, 2);
        req.token_merge = ratio;
        pipe.generate(&pipe.validate(&req).expect("valid"), &mut Quiet).expect("generate")
    };
    let plain = pipe
        .generate(&pipe.validate(&tiny_request("euler", 4, 3.0, 2)).expect("valid"), &mut Quiet)
        .expect("generate");
    assert_eq!(run(0.0).latents.data, plain.latents.data);
    let merged = run(0.5);
    assert_ne!(merged.latents.data, plain.latents.data);
    let p = latent_engine::metadata::Parameters::parse(&merged.metadata).expect("parses");
    assert_eq!(p.to_request(&tiny_request("euler", 4, 3.0, 2)).token_merge, 0.5);
    for bad in [-0.1, MAX_TOKEN_MERGE + 0.05, f64::NAN] {
        let mut req = tiny_request("euler", 4, 3.0, 2);
        req.token_merge = bad;
        let err = pipe.validate(&req).expect_err("refused");
        assert!(err.to_string().contains("token merging"), "{err}");
    }
}

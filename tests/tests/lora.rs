//! LoRA against the reference (fixtures/lora): kohya and PEFT files through diffusers' own
//! loader; LoCon, LoHa, LoKr, DoRA and old diffusers names through an independent numpy merge.
//! Tolerance: relative L2 error below 1e-4.

use candle_core::{Device, Tensor};
use latent_engine::lora::LoraFile;
use latent_engine::nets::unet::UnetInput;
use latent_engine::pipeline::Pipeline;
use latent_engine::protocol::ModelSpec;
use latent_tests::{Quiet, fixture, layouts, rel_l2};

const TOL: f64 = 1e-4;

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture("lora/reference.safetensors"), &Device::Cpu).expect("lora reference")
}

fn unet_out(pipe: &Pipeline, family: &str, context: &Tensor, pooled: Option<&Tensor>) -> Tensor {
    let x = latent_tests::reference(family)["unet.input"].clone();
    let ids = Tensor::from_vec(vec![64f32, 64.0, 0.0, 0.0, 64.0, 64.0], (1, 6), &Device::Cpu).expect("ids");
    let added = pooled.map(|p| (p, &ids));
    pipe.unet()
        .forward(&UnetInput {
            sample: &x,
            timesteps: &[500.0],
            context,
            added,
            token_merge: 0.0,
        })
        .expect("unet")
}

fn check(pipe: &mut Pipeline, family: &str, file: &str, tag: &str, r: &std::collections::HashMap<String, Tensor>, with_text: bool) {
    let lora = LoraFile::open(&fixture(&format!("lora/{file}"))).expect("open");
    // The LoRA must matter: the reference differs clearly from the model without it.
    pipe.apply_loras(&[]).expect("reset");
    let without = unet_out(pipe, family, &r[&format!("{tag}.text")], r.get(&format!("{tag}.pooled")));
    let effect = rel_l2(&without, &r[&format!("{tag}.unet")]);
    assert!(effect > 10.0 * TOL, "{tag}: the LoRA changes the UNet output by only {effect:.1e}");
    let reports = pipe.apply_loras(&[(&lora, 0.8, 0.8)]).expect("apply");
    assert_eq!(reports[0].applied, reports[0].total, "{file}: {}", reports[0].summary());
    let (ctx, pooled) = pipe.encode_prompt("a red cat", "blue", 1, true).expect("encode");
    if with_text {
        let err = rel_l2(&ctx.get(1).expect("cond"), &r[&format!("{tag}.text")].get(0).expect("row"));
        println!("{tag} text: {err:.2e}");
        assert!(err < TOL, "{tag} text {err}");
    }
    if let Some(p) = r.get(&format!("{tag}.pooled")) {
        let err = rel_l2(&pooled.as_ref().expect("pooled").get(1).expect("cond"), &p.get(0).expect("row"));
        println!("{tag} pooled: {err:.2e}");
        assert!(err < TOL, "{tag} pooled {err}");
    }
    let out = unet_out(pipe, family, &r[&format!("{tag}.text")], r.get(&format!("{tag}.pooled")));
    let err = rel_l2(&out, &r[&format!("{tag}.unet")]);
    println!("{tag} unet: {err:.2e}");
    assert!(err < TOL, "{tag} unet {err}");
}

#[test]
fn sd1_formats_match_the_reference_in_both_layouts() {
    let r = reference();
    for (layout, path) in layouts("sd1") {
        println!("-- {layout}");
        let mut pipe = Pipeline::load(&ModelSpec::new(&path)).expect("load");
        // The references start from the same base model.
        let out = unet_out(&pipe, "sd1", &r["sd1.base.text"], None);
        assert!(rel_l2(&out, &r["sd1.base.unet"]) < TOL);
        check(&mut pipe, "sd1", "sd1-kohya.safetensors", "sd1.kohya", &r, true);
        check(&mut pipe, "sd1", "sd1-peft.safetensors", "sd1.peft", &r, true);
        for (file, tag) in [
            ("sd1-locon.safetensors", "sd1.locon"),
            ("sd1-loha.safetensors", "sd1.loha"),
            ("sd1-lokr.safetensors", "sd1.lokr"),
            ("sd1-dora.safetensors", "sd1.dora"),
            ("sd1-attnproc.safetensors", "sd1.attnproc"),
            ("sd1-tucker.safetensors", "sd1.tucker"),
        ] {
            check(&mut pipe, "sd1", file, tag, &r, false);
        }
    }
}

#[test]
fn sdxl_kohya_with_both_text_encoders_matches_the_reference() {
    let r = reference();
    for (_, path) in layouts("sdxl") {
        let mut pipe = Pipeline::load(&ModelSpec::new(&path)).expect("load");
        check(&mut pipe, "sdxl", "sdxl-kohya.safetensors", "sdxl.kohya", &r, true);
    }
}

fn run(pipe: &Pipeline) -> Vec<f32> {
    let req = latent_tests::tiny_request("ddim", 10, 3.0, 1);
    pipe.generate(&pipe.validate(&req).expect("valid"), &mut Quiet)
        .expect("generate")
        .latents
        .data
}

#[test]
fn strengths_change_without_drift_and_a_foreign_lora_changes_nothing() {
    let r = reference();
    let mut pipe = Pipeline::load(&ModelSpec::new(&layouts("sd1")[0].1)).expect("load");
    let base = run(&pipe);
    let kohya = LoraFile::open(&fixture("lora/sd1-kohya.safetensors")).expect("open");
    // A full 10-step run with the LoRA at 0.8 matches diffusers.
    pipe.apply_loras(&[(&kohya, 0.8, 0.8)]).expect("apply");
    let with = run(&pipe);
    let want = &r["sd1.kohya.run"];
    let got = Tensor::from_vec(with.clone(), want.dims(), &Device::Cpu).expect("t");
    let err = rel_l2(&got, want);
    println!("kohya 10-step run: {err:.2e}");
    assert!(err < TOL);
    // Many strength changes, then back to 0.8: bit-identical (always merged from W0).
    for s in [0.1, -1.0, 2.5, 0.3] {
        pipe.apply_loras(&[(&kohya, s, s)]).expect("apply");
    }
    pipe.apply_loras(&[(&kohya, 0.8, 0.8)]).expect("apply");
    assert_eq!(run(&pipe), with);
    // Strength 0 and removal are bit-identical to the checkpoint alone.
    pipe.apply_loras(&[(&kohya, 0.0, 0.0)]).expect("apply");
    assert_eq!(run(&pipe), base);
    pipe.apply_loras(&[]).expect("remove");
    assert_eq!(run(&pipe), base);
    // An SDXL LoRA on an SD1 model: a clear error, and the model is untouched.
    pipe.apply_loras(&[(&kohya, 0.8, 0.8)]).expect("apply");
    let sdxl = LoraFile::open(&fixture("lora/sdxl-kohya.safetensors")).expect("open");
    let err = pipe.apply_loras(&[(&sdxl, 1.0, 1.0)]).expect_err("foreign LoRA");
    println!("{err}");
    assert!(
        err.to_string().contains("another model") || err.to_string().contains("made for"),
        "{err}"
    );
    assert_eq!(run(&pipe), with);
}

#[test]
fn lora_info_reads_format_rank_and_trigger_words() {
    let f = LoraFile::open(&fixture("lora/sd1-kohya.safetensors")).expect("open");
    assert_eq!(
        f.formats().get(&latent_engine::lora::LoraFormat::LoRa).copied(),
        Some(f.modules.len())
    );
    assert_eq!(f.trigger_words(2), vec![("red".to_string(), 12), ("cat".to_string(), 9)]);
    let xl = LoraFile::open(&fixture("lora/sdxl-kohya.safetensors")).expect("open");
    assert_eq!(xl.target_family(), "SDXL");
    let loha = LoraFile::open(&fixture("lora/sd1-loha.safetensors")).expect("open");
    assert!(loha.formats().contains_key(&latent_engine::lora::LoraFormat::LoHa));
}

/// Several LoRAs at once add their deltas: merging A and B equals A's change plus B's change.
#[test]
fn stacked_loras_add_up() {
    let pipe = Pipeline::load(&ModelSpec::new(&layouts("sd1")[0].1)).expect("load");
    let weights = pipe.base_weights();
    let base = &weights.tensors;
    let table = latent_engine::lora::keys::table(base.keys().map(|k| (k.as_str(), None)));
    let a = LoraFile::open(&fixture("lora/sd1-kohya.safetensors")).expect("open");
    let b = LoraFile::open(&fixture("lora/sd1-locon.safetensors")).expect("open");
    let (ab, reports) = latent_engine::lora::merge_into(weights, &table, &[(&a, 0.8, 0.6), (&b, 0.5, 0.5)]).expect("merge");
    assert_eq!(reports.len(), 2);
    let (only_a, _) = latent_engine::lora::merge_into(weights, &table, &[(&a, 0.8, 0.6)]).expect("merge");
    let (only_b, _) = latent_engine::lora::merge_into(weights, &table, &[(&b, 0.5, 0.5)]).expect("merge");
    let mut checked = 0;
    for (k, merged) in &ab {
        let w0 = &base[k];
        let da = only_a
            .get(k)
            .map(|t| (t - w0).expect("sub"))
            .unwrap_or_else(|| w0.zeros_like().expect("zeros"));
        let db = only_b
            .get(k)
            .map(|t| (t - w0).expect("sub"))
            .unwrap_or_else(|| w0.zeros_like().expect("zeros"));
        let want = ((w0 + da).expect("add") + db).expect("add");
        let diff: f32 = (merged - want)
            .expect("sub")
            .abs()
            .expect("abs")
            .flatten_all()
            .expect("flat")
            .max(0)
            .expect("max")
            .to_scalar()
            .expect("scalar");
        assert!(diff < 1e-5, "{k}: {diff}");
        checked += 1;
    }
    assert!(checked > only_a.len().max(only_b.len()), "both LoRAs touched layers ({checked})");
}

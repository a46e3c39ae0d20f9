//! Textual-inversion embeddings against diffusers' `load_textual_inversion` on the tiny SD1
//! model (`tests/fixtures/embeddings/make_embedding_fixture.py`): A1111 and diffusers files,
//! several vectors, called by file name (A1111) or `embedding:name` (ComfyUI), in the prompt
//! and the negative prompt; SDXL pairs; wrong files named in one clear error.

use latent_engine::pipeline::{Pipeline, Quiet, TextInput};
use latent_engine::protocol::{Emphasis, ModelSpec};
use latent_tests::{fixture, rel_l2, tiny_request};

fn pipe(model: &str) -> Pipeline {
    let mut p = Pipeline::load(&ModelSpec::new(fixture(model))).expect("load");
    p.embedding_dirs = vec![fixture("embeddings")];
    p
}

fn cond(
    p: &Pipeline,
    prompt: &str,
    negative: &str,
    with_uncond: bool,
) -> latent_engine::Result<latent_engine::pipeline::ScheduledConditioning> {
    p.scheduled_conditioning(&TextInput {
        prompt,
        negative,
        clip_skip: 1,
        with_uncond,
        steps: 10,
        emphasis: Emphasis::Original,
    })
}

#[test]
fn embeddings_encode_as_diffusers_loads_them() {
    let r = candle_core::safetensors::load(fixture("embeddings/reference.safetensors"), &candle_core::Device::Cpu).expect("reference");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("embeddings/reference.json")).expect("json")).expect("json");
    for layout in ["sd1/diffusers", "sd1/sd1-tiny.safetensors"] {
        let p = pipe(layout);
        for (i, prompt) in meta["prompts"].as_array().expect("prompts").iter().enumerate() {
            let prompt = prompt.as_str().expect("prompt");
            let c = cond(&p, prompt, "", false).expect("encode");
            let got = c.entries[0].1.get(0).expect("row");
            let e = rel_l2(&got, &r[&format!("prompt{i}")]);
            assert!(e < 1e-5, "{layout} {prompt:?}: rel L2 {e:.2e} against diffusers");
            assert!(!c.embeddings.is_empty(), "{prompt:?} uses an embedding");
        }
    }
}

#[test]
fn comfy_syntax_negative_prompt_and_metadata() {
    let p = pipe("sd1/sd1-tiny.safetensors");
    let a1111 = cond(&p, "a tinystyle cat", "", false).expect("encode");
    let comfy = cond(&p, "a embedding:tinystyle cat", "", false).expect("encode");
    let with_ext = cond(&p, "a embedding:tinystyle.safetensors cat", "", false).expect("encode");
    assert_eq!(rel_l2(&a1111.entries[0].1, &comfy.entries[0].1), 0.0);
    assert_eq!(rel_l2(&a1111.entries[0].1, &with_ext.entries[0].1), 0.0);
    // Without the folder the name is a plain word.
    let plain = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let word = cond(&plain, "a tinystyle cat", "", false).expect("encode");
    assert!(word.embeddings.is_empty());
    assert!(rel_l2(&word.entries[0].1, &a1111.entries[0].1) > 1e-3);
    // In the negative prompt.
    let neg = cond(&p, "a cat", "onevec", true).expect("encode");
    assert_eq!(neg.embeddings.len(), 1);
    let neg_plain = cond(&plain, "a cat", "onevec", true).expect("encode");
    assert!(rel_l2(&neg.entries[0].1.get(0).expect("row"), &neg_plain.entries[0].1.get(0).expect("row")) > 1e-3);
    // A1111's `TI hashes` in the parameters.
    let mut req = tiny_request("euler", 3, 3.0, 1);
    req.prompt = "a (tinystyle:1.2) cat".into();
    req.negative = "embedding:onevec".into();
    let job = p.validate(&req).expect("valid");
    let out = p.generate(&job, &mut Quiet).expect("generate");
    let params = latent_engine::metadata::Parameters::parse(&out.metadata).expect("parse");
    let ti = params.get("TI hashes").expect("TI hashes").to_string();
    assert!(ti.starts_with("onevec: ") && ti.contains(", tinystyle: "), "{ti}");
}

#[test]
fn sdxl_pairs_and_wrong_families_are_clear() {
    let xl = pipe("sdxl/sdxl-tiny.safetensors");
    let with = cond(&xl, "a sdxlpair cat", "", false).expect("encode");
    let plain = Pipeline::load(&ModelSpec::new(fixture("sdxl/sdxl-tiny.safetensors"))).expect("load");
    let without = cond(&plain, "a sdxlpair cat", "", false).expect("encode");
    assert_eq!(with.embeddings.len(), 1);
    assert!(rel_l2(&with.entries[0].1, &without.entries[0].1) > 1e-3);
    let err = cond(&xl, "a tinystyle cat", "", false)
        .err()
        .expect("SD1 embedding on SDXL")
        .to_string();
    assert!(err.contains("tinystyle.safetensors") && err.contains("clip_l and clip_g"), "{err}");
    let sd1 = pipe("sd1/sd1-tiny.safetensors");
    let err = cond(&sd1, "a sdxlpair cat", "", false)
        .err()
        .expect("SDXL embedding on SD1")
        .to_string();
    assert!(err.contains("sdxlpair.safetensors") && err.contains("SDXL embedding"), "{err}");
}

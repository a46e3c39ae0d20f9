//! Weighted, edited and alternating prompts through the text encoder against a reference of
//! A1111's own arithmetic (`tests/fixtures/prompt/make_emphasis_fixture.py`: A1111's parser,
//! its window chunking and its "Original"/"No norm" emphasis, ComfyUI's, on the tiny SD1
//! model), entry by entry of the schedule; and the schedule reaching the sampling loop.

use latent_engine::pipeline::Quiet;
use latent_engine::pipeline::{Pipeline, TextInput};
use latent_engine::protocol::Emphasis;
use latent_engine::protocol::ModelSpec;
use latent_tests::{fixture, rel_l2, tiny_request};

fn emphasis(name: &str) -> Emphasis {
    Emphasis::parse(name).unwrap_or_else(|| panic!("emphasis {name}"))
}

#[test]
fn conditioning_matches_a1111_reference() {
    let refs = candle_core::safetensors::load(fixture("prompt/emphasis.safetensors"), &candle_core::Device::Cpu).expect("fixture");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("prompt/emphasis.json")).expect("json")).expect("json");
    let pipe = Pipeline::load(&ModelSpec::new(fixture("sd1/diffusers"))).expect("load");
    for (ci, case) in meta["cases"].as_array().expect("cases").iter().enumerate() {
        let prompt = case["prompt"].as_str().expect("prompt");
        let mode = case["emphasis"].as_str().expect("emphasis");
        let steps = case["steps"].as_u64().expect("steps") as u32;
        let until: Vec<i64> = case["until_steps"]
            .as_array()
            .expect("until")
            .iter()
            .map(|v| v.as_i64().expect("i64"))
            .collect();
        let c = pipe
            .scheduled_conditioning(&TextInput {
                prompt,
                negative: "",
                clip_skip: 1,
                with_uncond: false,
                steps,
                emphasis: emphasis(mode),
            })
            .expect("encode");
        let ours: Vec<i64> = c.entries.iter().map(|e| e.0).collect();
        assert_eq!(ours, until, "case {ci} {prompt:?}: schedule");
        for (j, (_, ctx, _)) in c.entries.iter().enumerate() {
            let want = &refs[&format!("case{ci}.entry{j}")];
            let got = ctx.get(0).expect("row");
            assert_eq!(got.dims(), want.dims(), "case {ci} entry {j}: shape");
            let e = rel_l2(&got, want);
            assert!(e < 1e-5, "case {ci} {prompt:?} ({mode}) entry {j}: rel L2 {e:.2e}");
        }
    }
}

#[test]
fn each_distinct_text_is_encoded_once() {
    let pipe = Pipeline::load(&ModelSpec::new(fixture("sd1/diffusers"))).expect("load");
    // Ten alternating steps, two texts; the negative prompt's edit adds one more entry.
    let c = pipe
        .scheduled_conditioning(&TextInput {
            prompt: "[a|b] c",
            negative: "[x:y:4]",
            clip_skip: 1,
            with_uncond: true,
            steps: 10,
            emphasis: Emphasis::Original,
        })
        .expect("encode");
    assert_eq!(c.entries.len(), 10);
    assert_eq!(c.texts_encoded, 4);
    let plain = pipe
        .scheduled_conditioning(&TextInput {
            prompt: "a c",
            negative: "x",
            clip_skip: 1,
            with_uncond: true,
            steps: 10,
            emphasis: Emphasis::Original,
        })
        .expect("encode");
    assert_eq!(plain.entries.len(), 1);
    // Call 0 and 1 both use "a c" (A1111 counts calls from 0 with `<=`): same tensors as the
    // plain prompt's cond row, and the negative "x" before step 4.
    let d = rel_l2(&c.entries[0].1, &plain.entries[0].1);
    assert!(d < 1e-6, "first entry differs from the plain prompt: {d:.2e}");
    let later = rel_l2(&c.entries[1].1.get(1).expect("row"), &plain.entries[0].1.get(1).expect("row"));
    assert!(later > 1e-3, "the second text must differ");
}

#[test]
fn weights_and_edits_change_the_image_and_the_metadata() {
    let pipe = Pipeline::load(&ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))).expect("load");
    let run = |prompt: &str, emphasis: Emphasis| {
        let mut r = tiny_request("euler", 6, 3.0, 7);
        r.prompt = prompt.into();
        r.emphasis = emphasis;
        let job = pipe.validate(&r).expect("valid");
        pipe.generate(&job, &mut Quiet).expect("generate")
    };
    let base = run("a red cat", Emphasis::Original);
    let weighted = run("a (red:1.6) cat", Emphasis::Original);
    let literal = run("a (red:1.6) cat", Emphasis::None);
    let edited = run("a [blue:red:3] cat", Emphasis::Original);
    let diff = |a: &latent_engine::pipeline::Output, b: &latent_engine::pipeline::Output| {
        let n = a.latents.data.len() as f64;
        (a.latents
            .data
            .iter()
            .zip(&b.latents.data)
            .map(|(x, y)| f64::from(x - y).powi(2))
            .sum::<f64>()
            / n)
            .sqrt()
    };
    assert!(diff(&base, &weighted) > 1e-4, "a weight must change the result");
    assert!(diff(&weighted, &literal) > 1e-4, "emphasis None reads brackets as text");
    assert!(diff(&base, &edited) > 1e-4, "an edit must change the result");
    // Equal weights are the plain prompt, bit for bit.
    let same = run("a (red:1.0) cat", Emphasis::Original);
    assert_eq!(diff(&base, &same), 0.0);
    assert!(!base.metadata.contains("Emphasis"), "{}", base.metadata);
    assert!(literal.metadata.contains("Emphasis: None"), "{}", literal.metadata);
    let p = latent_engine::metadata::Parameters::parse(&literal.metadata).expect("parse");
    assert_eq!(p.to_request(&tiny_request("euler", 6, 3.0, 7)).emphasis, Emphasis::None);
}

/// SDXL: weights act on both encoders' halves of the context, and an edit changes the pooled
/// embedding too (each scheduled text has its own).
#[test]
fn sdxl_weights_and_edits_reach_both_encoders_and_the_pooled_output() {
    let pipe = Pipeline::load(&ModelSpec::new(fixture("sdxl/sdxl-tiny.safetensors"))).expect("load");
    let input = |prompt| TextInput {
        prompt,
        negative: "",
        clip_skip: 1,
        with_uncond: false,
        steps: 10,
        emphasis: Emphasis::NoNorm,
    };
    let plain = pipe.scheduled_conditioning(&input("a b")).expect("encode");
    let weighted = pipe.scheduled_conditioning(&input("(a:1.5) b")).expect("encode");
    let (p, w) = (&plain.entries[0].1, &weighted.entries[0].1);
    let width = p.dim(2).expect("width");
    let first = pipe.text_widths()[0];
    for (from, len) in [(0, first), (first, width - first)] {
        let d = rel_l2(&w.narrow(2, from, len).expect("half"), &p.narrow(2, from, len).expect("half"));
        assert!(d > 1e-3, "encoder half at {from}: {d:.2e}");
    }
    let edited = pipe.scheduled_conditioning(&input("[a:b:3] c")).expect("encode");
    assert_eq!(edited.entries.len(), 2);
    let pooled = |i: usize| edited.entries[i].2.clone().expect("pooled");
    assert!(rel_l2(&pooled(0), &pooled(1)) > 1e-3, "each text has its own pooled embedding");
}

//! Helpers shared by the end-to-end tests: fixture paths, reference files, error measures.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// `tests/fixtures/<rel>`.
pub fn fixture(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(rel)
}

/// The families with committed tiny models.
pub const FAMILIES: [&str; 3] = ["sd1", "sd2", "sdxl"];

/// The two layouts of each tiny model.
pub fn layouts(family: &str) -> [(&'static str, PathBuf); 2] {
    [
        ("single-file", fixture(&format!("{family}/{family}-tiny.safetensors"))),
        ("diffusers", fixture(&format!("{family}/diffusers"))),
    ]
}

/// diffusers' outputs for a family (see `fixtures/make_fixtures.py`).
pub fn reference(family: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(&format!("{family}/reference.safetensors")), &Device::Cpu).expect("reference fixture")
}

/// The JSON description next to the reference tensors.
pub fn reference_json(family: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(fixture(&format!("{family}/reference.json"))).expect("reference.json");
    serde_json::from_str(&text).expect("valid reference.json")
}

/// Relative L2 error `|a - b| / |b|` over all elements (f64 accumulation).
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f64 {
    let a: Vec<f32> = a
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor a");
    let b: Vec<f32> = b
        .to_dtype(candle_core::DType::F32)
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("tensor b");
    assert_eq!(a.len(), b.len(), "element counts differ");
    let num: f64 = a.iter().zip(&b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den.max(1e-30)).sqrt()
}

/// Hooks that never cancel and want no previews (for driving a `Pipeline` directly).
pub use latent_engine::pipeline::Quiet;

/// The tiny-model request the end-to-end tests share: 64x64, "a red cat" vs "blue".
pub fn tiny_request(solver: &str, steps: u32, cfg_scale: f64, seed: u64) -> latent_engine::protocol::GenerateRequest {
    latent_engine::protocol::GenerateRequest {
        prompt: "a red cat".into(),
        negative: "blue".into(),
        width: 64,
        height: 64,
        steps,
        cfg_scale,
        seed,
        solver: solver.into(),
        preview_every: 0,
        ..Default::default()
    }
}

/// The step numbers of the `Progress` events among `events`, in order.
pub fn progress_steps(events: &[latent_engine::protocol::Event]) -> Vec<u32> {
    events
        .iter()
        .filter_map(|e| {
            if let latent_engine::protocol::Event::Progress { step, .. } = e {
                Some(*step)
            } else {
                None
            }
        })
        .collect()
}

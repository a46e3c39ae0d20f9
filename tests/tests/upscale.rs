//! ESRGAN-family upscalers against spandrel's RRDBNet on random weights
//! (`tests/fixtures/upscale/make_upscale_fixture.py`): old-arch and Real-ESRGAN names, 4x and
//! 2x; tiles that agree with the whole picture; foreign files refused.

use candle_core::{DType, Device};
use latent_engine::checkpoint::load_upscaler;
use latent_engine::nets::esrgan::Esrgan;
use latent_engine::protocol::ImageRgb8;
use latent_tests::{fixture, rel_l2};

fn model(rel: &str) -> Esrgan {
    let w = load_upscaler(&fixture(rel), DType::F32, &Device::Cpu).unwrap_or_else(|e| panic!("{rel}: {e}"));
    Esrgan::new(&w).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn rrdbnet_matches_spandrel() {
    let r = candle_core::safetensors::load(fixture("upscale/reference.safetensors"), &Device::Cpu).expect("reference");
    for (file, key, scale) in [
        ("upscale/esrgan-x4.safetensors", "x4", 4),
        ("upscale/realesrgan-x4.safetensors", "x4", 4),
        ("upscale/esrgan-x2.safetensors", "x2", 2),
    ] {
        let m = model(file);
        assert_eq!(m.scale, scale, "{file}");
        let out = m.forward(&r["input"]).expect("forward");
        let e = rel_l2(&out, &r[key]);
        assert!(e < 1e-5, "{file}: rel L2 {e:.2e} against spandrel");
    }
}

#[test]
fn tiles_agree_with_the_whole_picture() {
    let m = model("upscale/esrgan-x2.safetensors");
    let (w, h) = (40u32, 28u32);
    let pixels = (0..w * h)
        .flat_map(|i| [(i * 7 % 256) as u8, (i * 13 % 256) as u8, (i / 3 % 256) as u8])
        .collect();
    let img = ImageRgb8 {
        width: w,
        height: h,
        pixels,
    };
    let whole = m.upscale(&img, 1024, 0, &Device::Cpu).expect("whole");
    let tiled = m.upscale(&img, 16, 12, &Device::Cpu).expect("tiled");
    assert_eq!((tiled.width, tiled.height), (80, 56));
    let worst = whole
        .pixels
        .iter()
        .zip(&tiled.pixels)
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
        .max()
        .unwrap_or(0);
    let mean = whole
        .pixels
        .iter()
        .zip(&tiled.pixels)
        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs() as f64)
        .sum::<f64>()
        / whole.pixels.len() as f64;
    // Pixels beyond the overlap still reach a tile's edge through the deep blocks, but too
    // weakly to change an 8-bit value here.
    assert!(
        mean < 0.05 && worst <= 1,
        "tiles differ from the whole: mean {mean:.2}, worst {worst} levels"
    );
}

#[test]
fn a_file_that_is_no_upscaler_is_a_clear_error() {
    let err = load_upscaler(&fixture("vae/tiny-vae.safetensors"), DType::F32, &Device::Cpu)
        .expect_err("not an upscaler")
        .to_string();
    assert!(err.contains("not an ESRGAN"), "{err}");
}

/// The engine thread upscales without a model: Started with the tile count, Progress per
/// tile, Finished with the enlarged picture (the same as the network's own call) and the
/// picture's parameters plus A1111's postprocess keys; a bad file fails and the next one runs.
#[test]
fn the_engine_upscales_without_a_model_and_keeps_serving() {
    use latent_engine::protocol::{Event, UpscaleRequest};
    use std::time::Duration;
    let engine = latent_engine::EngineHandle::spawn(latent_engine::EngineConfig::default(), || {}).expect("spawn");
    let pixels: Vec<u8> = (0..40 * 24 * 3).map(|i| (i * 13 % 251) as u8).collect();
    let img = ImageRgb8 {
        width: 40,
        height: 24,
        pixels,
    };
    let request = |model: std::path::PathBuf| UpscaleRequest {
        image: std::sync::Arc::new(img.clone()),
        model,
        parameters: "a cat\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 40x24".into(),
        tile: 16,
        overlap: 8,
    };
    let events = |id| {
        let mut out = vec![];
        loop {
            let e = engine.recv_timeout(Duration::from_secs(120)).expect("an event");
            if e.job() == Some(id) {
                let last = e.is_final();
                out.push(e);
                if last {
                    return out;
                }
            }
        }
    };
    let bad = engine.upscale(request(fixture("sd1/sd1-tiny.safetensors"))).expect("send");
    match events(bad).last() {
        Some(Event::Failed { error, .. }) => assert!(error.contains("not an ESRGAN-family upscaler"), "{error}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    let id = engine.upscale(request(fixture("upscale/esrgan-x2.safetensors"))).expect("send");
    let got = events(id);
    let tiles = Esrgan::tiles(40, 24, 16);
    assert_eq!(tiles, 6);
    assert!(matches!(got[0], Event::Started { total_steps: 6, .. }), "{:?}", got[0]);
    let steps: Vec<u32> = got
        .iter()
        .filter_map(|e| match e {
            Event::Progress { step, .. } => Some(*step),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=tiles).collect::<Vec<_>>());
    match got.last() {
        Some(Event::Finished {
            image, metadata, latents, ..
        }) => {
            let want = model("upscale/esrgan-x2.safetensors")
                .upscale(&img, 16, 8, &Device::Cpu)
                .expect("direct");
            assert_eq!((image.width, image.height), (80, 48));
            assert_eq!(image.pixels, want.pixels);
            assert!(latents.is_none());
            assert!(
                metadata.starts_with("a cat\n")
                    && metadata.contains("Seed: 5")
                    && metadata.contains("Postprocess upscale by: 2, Postprocess upscaler: esrgan-x2"),
                "{metadata}"
            );
        }
        other => panic!("expected Finished, got {other:?}"),
    }
    let missing = engine.upscale(request("nowhere.safetensors".into())).expect("send");
    match events(missing).last() {
        Some(Event::Failed { error, .. }) => assert!(error.contains("is not a file"), "{error}"),
        other => panic!("expected Failed, got {other:?}"),
    }
}

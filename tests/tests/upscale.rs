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

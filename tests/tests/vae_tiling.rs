//! Tiled VAE decoding: close to the whole decode, no seams, memory that of one tile.

use candle_core::{Device, Tensor};
use latent_engine::ModelSpec;
use latent_engine::nets::layers::CONV_UNFOLD_BUDGET;
use latent_engine::nets::vae::{MIN_TILE, TILE_OVERLAP, VaeTiling};
use latent_engine::pipeline::Pipeline;
use latent_tests::{layouts, rel_l2};

/// Smooth latents, like a denoised image's (white noise would be all edges).
fn latents(h: usize, w: usize) -> Tensor {
    let mut v = vec![];
    for c in 0..4 {
        for y in 0..h {
            for x in 0..w {
                let (fy, fx) = (y as f32 / h as f32, x as f32 / w as f32);
                v.push(((fx * 6.0 + c as f32).sin() + (fy * 4.0 - c as f32).cos() * 0.7 + fx * fy) * 0.8);
            }
        }
    }
    Tensor::from_vec(v, (1, 4, h, w), &Device::Cpu).expect("latents")
}

/// Mean |horizontal difference| of column pair (x-1, x) over rows and channels.
fn column_step(img: &Tensor, x: usize) -> f64 {
    let a = img.narrow(3, x - 1, 1).expect("narrow");
    let b = img.narrow(3, x, 1).expect("narrow");
    (b - a)
        .expect("sub")
        .abs()
        .expect("abs")
        .mean_all()
        .expect("mean")
        .to_scalar::<f32>()
        .expect("scalar") as f64
}

#[test]
fn tiled_decode_matches_the_whole_decode_without_seams() {
    let pipe = Pipeline::load(&ModelSpec::new(&layouts("sd1")[0].1)).expect("load");
    let vae = pipe.vae();
    let (h, w) = (40, 72);
    let tile = MIN_TILE;
    // Latents with the same statistics everywhere (texture): each tile's normalisation sees
    // what the whole image's does, so tiles agree with the whole decode closely.
    let noise = Tensor::randn(0f32, 1.0, (1, 4, h, w), &Device::Cpu).expect("noise");
    let err = rel_l2(
        &vae.decode_tiled(&noise, tile, TILE_OVERLAP).expect("tiled"),
        &vae.decode(&noise).expect("whole"),
    );
    assert!(err > 0.0 && err < 0.06, "tiled vs whole on texture: relative L2 {err:.4}");
    // Latents whose content changes across the image: tiles normalise differently (the
    // known limit of tiled decoding, which is why Auto tiles only when memory demands it),
    // but the blend leaves no seam: where one tile's output ends and the next one's
    // begins, the image steps no more than the whole decode does there.
    let z = latents(h, w);
    let whole = vae.decode(&z).expect("whole");
    let tiled = vae.decode_tiled(&z, tile, TILE_OVERLAP).expect("tiled");
    assert_eq!(tiled.dims(), whole.dims());
    let s = vae.config.scale();
    let step = tile - TILE_OVERLAP;
    for k in 1..=((w - tile) / step) {
        for x in [k * step * s, (k * step + TILE_OVERLAP) * s] {
            let (t, u) = (column_step(&tiled, x), column_step(&whole, x));
            assert!(t <= u * 1.5 + 0.01, "seam at x={x}: step {t:.4} vs {u:.4} in the whole decode");
        }
    }
    // A tile as large as the image is the whole decode, bit for bit.
    let same = vae.decode_tiled(&z, 80, TILE_OVERLAP).expect("one tile");
    assert_eq!(rel_l2(&same, &whole), 0.0);
}

#[test]
fn automatic_tiling_follows_the_memory_budget() {
    let pipe = Pipeline::load(&ModelSpec::new(&layouts("sd1")[0].1)).expect("load");
    let vae = pipe.vae();
    // Activations grow with the area and the batch; the convolution buffer is fixed.
    let act = |b: usize, h: usize, w: usize| vae.decode_bytes(b, h, w) - CONV_UNFOLD_BUDGET as u64;
    assert!(act(1, 64, 64) >= 4 * act(1, 32, 32), "memory grows with the area");
    assert_eq!(act(2, 32, 32), 2 * act(1, 32, 32), "and with the batch");
    // Enough memory: whole; too little: tiles that fit; off: never; fixed: as asked.
    assert_eq!(vae.tile_for(VaeTiling::Auto, 1, 64, 64, u64::MAX), None);
    let budget = vae.decode_bytes(1, 40, 40);
    let t = vae.tile_for(VaeTiling::Auto, 1, 128, 96, budget).expect("tiles");
    assert!((MIN_TILE..=40).contains(&t) && vae.decode_bytes(1, t, t) <= budget, "tile {t}");
    assert_eq!(vae.tile_for(VaeTiling::Off, 1, 128, 96, 1), None);
    assert_eq!(vae.tile_for(VaeTiling::Tile(32), 1, 128, 96, u64::MAX), Some(32));
    assert_eq!(
        vae.tile_for(VaeTiling::Tile(32), 1, 24, 24, u64::MAX),
        None,
        "a tile covering the image is a whole decode"
    );
    // Through the pipeline's switch, a tiny budget still gives a full-size image.
    let z = latents(48, 48);
    let img = vae.decode_with(&z, VaeTiling::Auto, vae.decode_bytes(1, 30, 30)).expect("decode");
    assert_eq!(img.dims(), &[1, 3, 96, 96]);
}

#[test]
fn tiled_encode_matches_the_whole_encode_and_follows_the_budget() {
    use latent_engine::checkpoint::{self, architecture};
    use latent_engine::nets::vae::VaeEncoder;
    let path = &layouts("sd1")[0].1;
    let w = checkpoint::load(path, candle_core::DType::F32, &Device::Cpu).expect("load");
    let cfg = architecture::infer(&w, "sd1").expect("config");
    let enc = VaeEncoder::new(&w, &cfg.vae).expect("encoder");
    let s = cfg.vae.scale();
    let (h, w) = (40, 72);
    // A picture with the same statistics everywhere, in [-1, 1].
    let x = Tensor::rand(-1f32, 1.0, (1, 3, h * s, w * s), &Device::Cpu).expect("pixels");
    let (mean, logvar) = enc.encode(&x).expect("whole");
    let (tm, tl) = enc.encode_with(&x, s, VaeTiling::Tile(MIN_TILE), u64::MAX).expect("tiled");
    assert_eq!(tm.dims(), mean.dims());
    assert_eq!(tl.dims(), logvar.dims());
    let (em, el) = (rel_l2(&tm, &mean), rel_l2(&tl, &logvar));
    assert!(
        em > 0.0 && em < 0.08 && el < 0.08,
        "tiled vs whole encode: mean {em:.4}, logvar {el:.4}"
    );
    // Memory grows with the area; with enough of it the encode is whole, bit for bit; a
    // small budget tiles and still gives the whole latent grid.
    let act = |hh: usize, ww: usize| enc.encode_bytes(1, hh, ww) - CONV_UNFOLD_BUDGET as u64;
    assert!(act(128, 128) >= 4 * act(64, 64));
    let (am, _) = enc.encode_with(&x, s, VaeTiling::Auto, u64::MAX).expect("auto whole");
    assert_eq!(rel_l2(&am, &mean), 0.0);
    let budget = enc.encode_bytes(1, 30 * s, 30 * s);
    let (bm, _) = enc.encode_with(&x, s, VaeTiling::Auto, budget).expect("auto tiled");
    assert_eq!(bm.dims(), mean.dims());
    assert!(rel_l2(&bm, &mean) > 0.0, "a small budget tiles");
    let (om, _) = enc.encode_with(&x, s, VaeTiling::Off, 1).expect("off");
    assert_eq!(rel_l2(&om, &mean), 0.0);
}

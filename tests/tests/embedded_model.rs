//! The files this project ships in `assets/`: the embedded default model and the demo LoRA.
//! They are loaded through the same code path as a user's checkpoint and LoRA, and judged by
//! what they draw: colour statistics of generated images against the prompt, and a classifier
//! of the objects the prompts name, trained here on the training pictures.

use std::path::PathBuf;

use candle_core::{D, Device, Tensor};
use latent_engine::checkpoint;
use latent_engine::lora::LoraFile;
use latent_engine::pipeline::Pipeline;
use latent_engine::protocol::{GenerateRequest, ImageRgb8, ModelSpec};
use latent_engine::train::dataset::COLORS;
use latent_tests::Quiet;

fn asset(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join("assets").join(rel)
}

/// The shipped model, or the candidate named by `LATENT_STUDIO_TEST_MODEL` (to judge a
/// training run's export with the same tests before it is shipped).
fn model() -> PathBuf {
    std::env::var_os("LATENT_STUDIO_TEST_MODEL").map_or_else(|| asset("models/latent-studio-default.safetensors"), PathBuf::from)
}

/// The window's defaults for a new user: DPM++ 2M on the Karras schedule, 20 steps, the
/// model's own size (and, passed in, its own guidance).
fn request(prompt: &str, cfg_scale: f64, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: prompt.into(),
        width: 64,
        height: 64,
        steps: 20,
        cfg_scale,
        seed,
        solver: "dpm++2m".into(),
        schedule: "karras".into(),
        preview_every: 0,
        ..Default::default()
    }
}

fn generate(pipe: &Pipeline, r: &GenerateRequest) -> ImageRgb8 {
    let job = pipe.validate(r).expect("valid request");
    pipe.generate(&job, &mut Quiet).expect("generate").image
}

/// Index of the palette colour nearest to a pixel.
fn nearest(p: &[u8]) -> usize {
    let d = |c: &[u8; 3]| -> i32 { (0..3).map(|k| (i32::from(p[k]) - i32::from(c[k])).pow(2)).sum() };
    (0..COLORS.len()).min_by_key(|&i| d(&COLORS[i].1)).unwrap_or(0)
}

/// The palette colour covering most of the pixels that `keep(x, y)` selects.
fn dominant(img: &ImageRgb8, keep: impl Fn(u32, u32) -> bool) -> usize {
    let mut votes = [0usize; COLORS.len()];
    for y in 0..img.height {
        for x in 0..img.width {
            if keep(x, y) {
                let i = ((y * img.width + x) * 3) as usize;
                votes[nearest(&img.pixels[i..i + 3])] += 1;
            }
        }
    }
    (0..COLORS.len()).max_by_key(|&i| votes[i]).unwrap_or(0)
}

fn color(name: &str) -> usize {
    COLORS.iter().position(|(n, _)| *n == name).expect("a palette colour")
}

/// "a {shape colour} {shape} on a {background} background": large shapes sit in the middle,
/// so the centre must be the shape's colour and the border the background's.
fn agrees(img: &ImageRgb8, shape_color: usize, background: usize) -> bool {
    let (w, h) = (img.width, img.height);
    let centre = dominant(img, |x, y| x >= w * 3 / 8 && x < w * 5 / 8 && y >= h * 3 / 8 && y < h * 5 / 8);
    let border = dominant(img, |x, y| x < w / 10 || x >= w - w / 10 || y < h / 10 || y >= h - h / 10);
    centre == shape_color && border == background
}

/// The shipped model draws shapes on black and white backgrounds only (assets/README.md: its
/// training run's `--shape-backgrounds black,white`); objects keep every background.
const PROMPTS: [(&str, &str, &str); 6] = [
    ("red", "circle", "white"),
    ("yellow", "square", "black"),
    ("green", "heart", "white"),
    ("blue", "diamond", "white"),
    ("white", "circle", "black"),
    ("pink", "square", "black"),
];
const SEEDS: u64 = 4;

/// Fraction of the centre's pixels nearest the shape's colour and of the border's nearest the
/// background's, averaged: how strongly (not only whether) a picture shows its prompt.
fn coverage(img: &ImageRgb8, shape_color: usize, background: usize) -> f64 {
    let (w, h) = (img.width, img.height);
    let share = |keep: &dyn Fn(u32, u32) -> bool, want: usize| {
        let (mut hit, mut n) = (0usize, 0usize);
        for y in 0..h {
            for x in 0..w {
                if keep(x, y) {
                    let i = ((y * w + x) * 3) as usize;
                    n += 1;
                    hit += usize::from(nearest(&img.pixels[i..i + 3]) == want);
                }
            }
        }
        hit as f64 / n.max(1) as f64
    };
    let centre = share(
        &|x, y| x >= w * 3 / 8 && x < w * 5 / 8 && y >= h * 3 / 8 && y < h * 5 / 8,
        shape_color,
    );
    let border = share(&|x, y| x < w / 10 || x >= w - w / 10 || y < h / 10 || y >= h - h / 10, background);
    (centre + border) / 2.0
}

/// At guidance `cfg`: the share of (prompt, seed) pairs whose picture agrees with the prompt,
/// the mean [`coverage`], and the misses.
fn agreement(pipe: &Pipeline, cfg: f64) -> (f64, f64, Vec<String>) {
    let (mut ok, mut n, mut cov, mut misses) = (0, 0, 0.0, vec![]);
    for (c, shape, bg) in PROMPTS {
        let a = |w: &str| if w.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
        let prompt = format!("{} {c} {shape} on {} {bg} background", a(c), a(bg));
        for seed in 0..SEEDS {
            let img = generate(pipe, &request(&prompt, cfg, seed));
            n += 1;
            cov += coverage(&img, color(c), color(bg));
            if agrees(&img, color(c), color(bg)) {
                ok += 1;
            } else {
                misses.push(format!("{prompt} (seed {seed})"));
            }
        }
    }
    (f64::from(ok) / f64::from(n), cov / f64::from(n), misses)
}

#[test]
fn the_colour_check_agrees_with_the_training_pictures() {
    // The judge itself: on the pictures the model learnt from (large circles, squares, hearts
    // and diamonds, which the prompts below name), it must say "agrees".
    use latent_engine::train::dataset::{SHAPES, Subject, sample};
    let judged: Vec<bool> = (0..3000)
        .map(|i| sample(1, i, 64))
        .filter_map(|s| match s.subject {
            Subject::Shape { shape, color, large: true } if ["circle", "square", "heart", "diamond"].contains(&SHAPES[shape]) => {
                Some(agrees(&s.image, color, s.background))
            }
            _ => None,
        })
        .collect();
    assert!(judged.len() > 100, "{} pictures", judged.len());
    let ok = judged.iter().filter(|&&a| a).count();
    assert!(
        ok as f64 >= 0.97 * judged.len() as f64,
        "{ok} of {} training pictures judged right",
        judged.len()
    );
}

#[test]
fn the_embedded_model_is_a_small_single_file_the_engine_loads_like_any_checkpoint() {
    let path = model();
    let bytes = std::fs::metadata(&path)
        .expect("assets/models/latent-studio-default.safetensors is shipped")
        .len();
    assert!(bytes <= 25 << 20, "{bytes} bytes: over 25 MB");
    let pipe = Pipeline::load(&ModelSpec::new(&path)).expect("loads through the user-checkpoint path");
    assert_eq!(pipe.config.default_size, (64, 64));
    // Its own latent-preview coefficients are in the metadata and are the ones the previews use.
    let w = checkpoint::load(&path, candle_core::DType::F32, &candle_core::Device::Cpu).expect("weights");
    let fitted = latent_engine::preview::LatentRgb::from_metadata(&w.metadata).expect("fitted preview coefficients in the metadata");
    assert_eq!(pipe.preview_coefficients(), &fitted);
}

#[test]
fn prompts_decide_what_the_embedded_model_draws_and_guidance_strengthens_it() {
    let pipe = Pipeline::load(&ModelSpec::new(model())).expect("load");
    // The default guidance: the one in the model's metadata, which the window and `generate`
    // start from.
    let default = pipe.info().default_guidance;
    assert!(default > 1.0, "the embedded model is made for guidance {default}");
    let (guided, guided_cov, misses) = agreement(&pipe, default);
    let (unguided, unguided_cov, _) = agreement(&pipe, 1.0);
    eprintln!(
        "agreement: guidance {default} {guided:.2} (coverage {guided_cov:.3}), guidance 1 {unguided:.2} (coverage {unguided_cov:.3}); misses at {default}: {misses:?}"
    );
    assert!(
        guided >= 0.8,
        "only {guided:.2} of the pictures at guidance {default} agree with their prompt: {misses:?}"
    );
    // Guidance must not weaken the colours: they cover more of the picture with it than
    // without. This model follows colour words at guidance 1 too (BENCHMARKS.md), so here it
    // is tested on how strongly, not on whether; the shape and object tests below are where
    // guidance 1 is clearly less reliable.
    assert!(
        guided_cov > unguided_cov && guided >= unguided,
        "guidance {default}: agreement {guided:.2}, coverage {guided_cov:.3}; guidance 1: {unguided:.2}, {unguided_cov:.3}"
    );
}

/// A picture as 16x16 block means of its RGB values in [0, 1] (64x64 pictures).
fn features(img: &ImageRgb8) -> Vec<f32> {
    let (w, b) = (img.width as usize, img.width as usize / 16);
    let mut f = vec![0f32; 16 * 16 * 3];
    for y in 0..img.height as usize {
        for x in 0..w {
            for c in 0..3 {
                f[((y / b) * 16 + x / b) * 3 + c] += f32::from(img.pixels[(y * w + x) * 3 + c]) / (255.0 * (b * b) as f32);
            }
        }
    }
    f
}

/// Softmax regression (gradient descent on standardised inputs, small L2): the judges of
/// what a picture shows, trained here on training pictures.
struct Softmax {
    mean: Tensor,
    std: Tensor,
    w: Tensor,
    b: Tensor,
}

impl Softmax {
    fn fit(xs: Vec<f32>, ys: &[usize], classes: usize) -> candle_core::Result<Self> {
        let dev = Device::Cpu;
        let n = ys.len();
        let dim = xs.len() / n.max(1);
        let x = Tensor::from_vec(xs, (n, dim), &dev)?;
        let mean = x.mean_keepdim(0)?;
        let centred = x.broadcast_sub(&mean)?;
        let std = (centred.sqr()?.mean_keepdim(0)?.sqrt()? + 1e-3)?;
        let z = centred.broadcast_div(&std)?;
        let onehot: Vec<f32> = ys
            .iter()
            .flat_map(|&y| (0..classes).map(move |k| f32::from(u8::from(k == y))))
            .collect();
        let onehot = Tensor::from_vec(onehot, (n, classes), &dev)?;
        let mut w = Tensor::zeros((dim, classes), candle_core::DType::F32, &dev)?;
        let mut b = Tensor::zeros((1, classes), candle_core::DType::F32, &dev)?;
        for _ in 0..300 {
            let logits = z.matmul(&w)?.broadcast_add(&b)?;
            let e = logits.broadcast_sub(&logits.max_keepdim(1)?)?.exp()?;
            let g = (e.broadcast_div(&e.sum_keepdim(1)?)? - &onehot)?;
            let gw = ((z.t()?.matmul(&g)? / n as f64)? + (&w * 1e-3)?)?;
            w = (&w - (gw * 0.5)?)?;
            b = (&b - (g.mean_keepdim(0)? * 0.5)?)?;
        }
        Ok(Self { mean, std, w, b })
    }

    fn classify(&self, features: Vec<f32>) -> usize {
        let run = || -> candle_core::Result<usize> {
            let x = Tensor::from_vec(features, (1, self.mean.dim(1)?), &Device::Cpu)?;
            let z = x.broadcast_sub(&self.mean)?.broadcast_div(&self.std)?;
            let logits = z.matmul(&self.w)?.broadcast_add(&self.b)?;
            Ok(logits.argmax(D::Minus1)?.flatten_all()?.to_vec1::<u32>()?[0] as usize)
        };
        run().expect("classify")
    }
}

/// Which object a picture shows: [`Softmax`] on [`features`], trained on the objects among
/// the training pictures of data seed 1.
struct ObjectClassifier(Softmax);

impl ObjectClassifier {
    fn train() -> Self {
        use latent_engine::train::dataset::{OBJECTS, Subject, sample};
        let (mut xs, mut ys) = (vec![], vec![]);
        for s in (0..3000).map(|i| sample(1, i, 64)) {
            if let Subject::Object { object, .. } = s.subject {
                xs.extend(features(&s.image));
                ys.push(object);
            }
        }
        Self(Softmax::fit(xs, &ys, OBJECTS.len()).expect("train the object classifier"))
    }

    fn classify(&self, img: &ImageRgb8) -> usize {
        self.0.classify(features(img))
    }
}

/// The outline of what a picture shows in `subject` colour on `background`: each pixel 1
/// where it is nearer the subject's colour, moved so the outline's centroid is at the
/// centre, as 16x16 block means (64x64 pictures).
fn outline(img: &ImageRgb8, subject: usize, background: usize) -> Vec<f32> {
    let (w, h) = (img.width as usize, img.height as usize);
    let (a, b) = (COLORS[subject].1, COLORS[background].1);
    let d = |p: &[u8], c: [u8; 3]| -> i32 { (0..3).map(|k| (i32::from(p[k]) - i32::from(c[k])).pow(2)).sum() };
    let mask: Vec<bool> = img.pixels.chunks(3).map(|p| d(p, a) < d(p, b)).collect();
    let n = mask.iter().filter(|&&m| m).count().max(1) as f64;
    let (mut cx, mut cy) = (0f64, 0f64);
    for (i, _) in mask.iter().enumerate().filter(|(_, m)| **m) {
        cx += (i % w) as f64 / n;
        cy += (i / w) as f64 / n;
    }
    let shift = |c: f64, len: usize| ((len as f64 - 1.0) / 2.0 - c).round() as isize;
    let (sx, sy) = (shift(cx, w), shift(cy, h));
    let (bw, bh) = (w / 16, h / 16);
    let mut f = vec![0f32; 256];
    for y in 0..h {
        for x in 0..w {
            if mask[y * w + x] {
                // Wrapping, so nothing is lost off an edge.
                let tx = (x as isize + sx).rem_euclid(w as isize) as usize;
                let ty = (y as isize + sy).rem_euclid(h as isize) as usize;
                f[(ty / bh).min(15) * 16 + (tx / bw).min(15)] += 1.0 / (bw * bh) as f32;
            }
        }
    }
    f
}

/// Which shape a picture shows: [`Softmax`] on the [`outline`] of the shape's colour against
/// the background's, trained on the large shapes among the training pictures of data seed 1
/// (the prompts name large shapes: "a red star on a white background").
struct ShapeClassifier(Softmax);

impl ShapeClassifier {
    fn train() -> Self {
        use latent_engine::train::dataset::{SHAPES, Subject, sample};
        let (mut xs, mut ys) = (vec![], vec![]);
        for s in (0..3000).map(|i| sample(1, i, 64)) {
            if let Subject::Shape { shape, color, large: true } = s.subject {
                xs.extend(outline(&s.image, color, s.background));
                ys.push(shape);
            }
        }
        Self(Softmax::fit(xs, &ys, SHAPES.len()).expect("train the shape classifier"))
    }

    fn classify(&self, img: &ImageRgb8, subject: usize, background: usize) -> usize {
        self.0.classify(outline(img, subject, background))
    }
}

#[test]
fn the_shape_classifier_recognises_training_pictures_it_has_not_seen() {
    use latent_engine::train::dataset::{Subject, sample};
    let judge = ShapeClassifier::train();
    let (mut ok, mut n) = (0, 0);
    for s in (0..1500).map(|i| sample(2, i, 64)) {
        if let Subject::Shape { shape, color, large: true } = s.subject {
            n += 1;
            ok += usize::from(judge.classify(&s.image, color, s.background) == shape);
        }
    }
    assert!(
        n > 300 && ok as f64 >= 0.95 * n as f64,
        "{ok}/{n} unseen training pictures classified right"
    );
}

/// Shapes the prompts name ("a red star on a white background"): every shape in four colours,
/// on the two backgrounds the model's shapes are trained on.
const SHAPE_PAIRS: [(&str, &str); 4] = [("red", "white"), ("yellow", "black"), ("blue", "white"), ("pink", "black")];
const SHAPE_SEEDS: u64 = 2;

/// Share of the shape prompts whose picture the outline classifier assigns to the named
/// shape, at guidance `cfg`; and the misses.
fn shape_agreement(pipe: &Pipeline, judge: &ShapeClassifier, cfg: f64) -> (f64, Vec<String>) {
    shape_agreement_with(pipe, judge, cfg, 1)
}

/// [`shape_agreement`] with the feature cache at interval `feature_cache`.
fn shape_agreement_with(pipe: &Pipeline, judge: &ShapeClassifier, cfg: f64, feature_cache: u32) -> (f64, Vec<String>) {
    use latent_engine::train::dataset::SHAPES;
    let (mut n, mut misses) = (0, vec![]);
    for (c, bg) in SHAPE_PAIRS {
        for (k, shape) in SHAPES.iter().enumerate() {
            for seed in 0..SHAPE_SEEDS {
                let article = if c.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
                let prompt = format!("{article} {c} {shape} on a {bg} background");
                let r = GenerateRequest {
                    feature_cache,
                    ..request(&prompt, cfg, seed)
                };
                let got = judge.classify(&generate(pipe, &r), color(c), color(bg));
                n += 1;
                if got != k {
                    misses.push(format!("{prompt} (seed {seed}) -> {}", SHAPES[got]));
                }
            }
        }
    }
    (1.0 - misses.len() as f64 / n as f64, misses)
}

#[test]
fn prompts_name_shapes_the_model_draws() {
    let pipe = Pipeline::load(&ModelSpec::new(model())).expect("load");
    let judge = ShapeClassifier::train();
    let default = pipe.info().default_guidance;
    let (guided, misses) = shape_agreement(&pipe, &judge, default);
    let (unguided, unguided_misses) = shape_agreement(&pipe, &judge, 1.0);
    eprintln!(
        "shapes: guidance {default} {guided:.2} {misses:?}; guidance 1 {unguided:.2} ({} misses)",
        unguided_misses.len()
    );
    // Chance is 1/8.
    assert!(
        guided >= 0.8,
        "only {guided:.2} of the pictures at guidance {default} show the named shape: {misses:?}"
    );
    assert!(
        unguided <= guided - 0.08,
        "guidance 1 should be clearly less reliable: {unguided:.2} vs {guided:.2} at guidance {default}"
    );
}

#[test]
fn the_feature_cache_keeps_the_shapes_the_prompts_name() {
    let pipe = Pipeline::load(&ModelSpec::new(model())).expect("load");
    let judge = ShapeClassifier::train();
    let default = pipe.info().default_guidance;
    // The window's suggested interval: two of every three evaluations run the top level only.
    let (share, misses) = shape_agreement_with(&pipe, &judge, default, 3);
    eprintln!("shapes with the feature cache every 3 steps: {share:.2} {misses:?}");
    assert!(
        share >= 0.8,
        "only {share:.2} of the pictures show the named shape with the feature cache: {misses:?}"
    );
}

#[test]
fn the_object_classifier_recognises_training_pictures_it_has_not_seen() {
    use latent_engine::train::dataset::{Subject, sample};
    let judge = ObjectClassifier::train();
    // Pictures of another data seed: same objects, other places, sizes and backgrounds.
    let (mut ok, mut n) = (0, 0);
    for s in (0..1500).map(|i| sample(2, i, 64)) {
        if let Subject::Object { object, .. } = s.subject {
            n += 1;
            ok += usize::from(judge.classify(&s.image) == object);
        }
    }
    assert!(
        n > 300 && ok as f64 >= 0.95 * n as f64,
        "{ok}/{n} unseen training pictures classified right"
    );
}

/// Objects the prompts name, with backgrounds that none of the object's own colours has.
fn object_prompts() -> Vec<(usize, String)> {
    use latent_engine::train::dataset::{OBJECTS, object_colors};
    let backgrounds = ["blue", "white", "purple", "pink", "orange", "black", "green", "red"];
    let mut out = vec![];
    for (k, o) in OBJECTS.iter().enumerate() {
        let own = object_colors(k);
        let spare: Vec<&str> = ["blue", "purple", "white", "black", "pink", "orange"]
            .into_iter()
            .filter(|c| !own.contains(c))
            .collect();
        for (i, bg) in backgrounds.iter().enumerate() {
            let bg = if own.contains(bg) { spare[i % 3] } else { bg };
            let what = match *o {
                "face" => "a happy face".to_string(),
                "apple" => "an apple".to_string(),
                _ => format!("a {o}"),
            };
            out.push((k, format!("{what} on a {bg} background")));
        }
    }
    out
}

/// Share of [`object_prompts`] (seed = position in the list of each object) whose picture the
/// classifier assigns to the named object, at guidance `cfg`; and the misses.
fn object_agreement(pipe: &Pipeline, judge: &ObjectClassifier, cfg: f64) -> (f64, Vec<String>) {
    use latent_engine::train::dataset::OBJECTS;
    let prompts = object_prompts();
    let mut misses = vec![];
    for (i, (k, prompt)) in prompts.iter().enumerate() {
        let seed = (i % 8) as u64;
        let got = judge.classify(&generate(pipe, &request(prompt, cfg, seed)));
        if got != *k {
            misses.push(format!("{prompt} (seed {seed}) -> {}", OBJECTS[got]));
        }
    }
    (1.0 - misses.len() as f64 / prompts.len() as f64, misses)
}

#[test]
fn prompts_name_objects_the_model_draws_and_guidance_is_what_makes_it_reliable() {
    let pipe = Pipeline::load(&ModelSpec::new(model())).expect("load");
    let judge = ObjectClassifier::train();
    let default = pipe.info().default_guidance;
    let (guided, misses) = object_agreement(&pipe, &judge, default);
    let (unguided, unguided_misses) = object_agreement(&pipe, &judge, 1.0);
    eprintln!("objects: guidance {default} {guided:.2} {misses:?}; guidance 1 {unguided:.2} {unguided_misses:?}");
    assert!(
        guided >= 0.8,
        "only {guided:.2} of the pictures at guidance {default} show the named object: {misses:?}"
    );
    // The shipped model names objects right at guidance 1 too, most of the time (BENCHMARKS.md):
    // guidance must still get more of them right; the clear gap is the shape test's.
    assert!(
        unguided < guided,
        "guidance 1 should be less reliable: {unguided:.2} vs {guided:.2} at guidance {default}"
    );
}

/// Fraction of nearly white pixels.
fn white_fraction(img: &ImageRgb8) -> f64 {
    let white = img.pixels.chunks(3).filter(|p| p.iter().all(|&v| v >= 215)).count();
    white as f64 / (img.width * img.height) as f64
}

#[test]
fn the_demo_lora_draws_outlines_at_strength_one_and_nothing_at_zero() {
    let lora = asset("loras/outline.safetensors");
    assert!(lora.exists(), "assets/loras/outline.safetensors is shipped");
    let mut pipe = Pipeline::load(&ModelSpec::new(model())).expect("load");
    let prompts = [
        "a red circle on a black background",
        "a happy face on a green background",
        "a house on a purple background",
    ];
    let images = |pipe: &Pipeline| -> Vec<ImageRgb8> {
        prompts
            .iter()
            .flat_map(|p| (0..2).map(move |s| request(p, pipe.info().default_guidance, s)))
            .map(|r| generate(pipe, &r))
            .collect()
    };
    let plain = images(&pipe);
    let file = LoraFile::open(&lora).expect("the demo LoRA opens");
    pipe.apply_loras(&[(&file, 0.0, 0.0)]).expect("the demo LoRA applies");
    assert_eq!(images(&pipe), plain, "strength 0 must be bit-identical to no LoRA");
    let report = pipe.apply_loras(&[(&file, 1.0, 1.0)]).expect("the demo LoRA applies");
    assert!(report.iter().all(|r| r.applied > 0 && r.applied == r.total), "{report:?}");
    let styled = images(&pipe);
    let mean = |v: &[ImageRgb8]| v.iter().map(white_fraction).sum::<f64>() / v.len() as f64;
    let (before, after) = (mean(&plain), mean(&styled));
    eprintln!("white fraction: no LoRA {before:.2}, outline LoRA {after:.2}");
    assert!(
        after >= before + 0.25,
        "white fraction {before:.2} -> {after:.2}: the outline style did not show"
    );
}

#[test]
fn the_autoencoder_keeps_the_colours_the_prompts_name() {
    // The denoiser can only be as right as the autoencoder: encode -> decode of the training
    // pictures must still pass the colour check.
    use latent_engine::nets::vae::{VaeDecoder, VaeEncoder};
    use latent_engine::train::dataset::{SHAPES, Subject, sample};
    let path = model();
    let w = checkpoint::load(&path, candle_core::DType::F32, &candle_core::Device::Cpu).expect("weights");
    let cfg = latent_engine::checkpoint::architecture::infer(&w, "embedded").expect("config");
    let (enc, dec) = (
        VaeEncoder::new(&w, &cfg.vae).expect("encoder"),
        VaeDecoder::new(&w, &cfg.vae).expect("decoder"),
    );
    let picked: Vec<_> = (0..3000)
        .map(|i| sample(1, i, 64))
        .filter(|s| matches!(s.subject, Subject::Shape { shape, large: true, .. } if ["circle", "square", "heart", "diamond"].contains(&SHAPES[shape])))
        .take(64)
        .collect();
    let items: Vec<(ImageRgb8, String)> = picked.iter().map(|s| (s.image.clone(), s.caption.clone())).collect();
    let batch = latent_engine::train::trainer::images_batch(&items, &candle_core::Device::Cpu).expect("batch");
    let (mean, _) = enc.encode(&batch.images).expect("encode");
    let out = dec.decode(&mean).expect("decode");
    let out = ((out.clamp(-1f32, 1f32).expect("clamp") + 1.0).expect("+") * 127.5).expect("*");
    let (b, _, h, wd) = out.dims4().expect("dims");
    let v: Vec<f32> = out
        .permute((0, 2, 3, 1))
        .and_then(|t| t.flatten_all())
        .and_then(|t| t.to_vec1())
        .expect("pixels");
    let mut ok = 0;
    let mut l1 = 0.0;
    for (i, s) in picked.iter().enumerate() {
        let px: Vec<u8> = v[i * h * wd * 3..(i + 1) * h * wd * 3].iter().map(|x| x.round() as u8).collect();
        l1 += px
            .iter()
            .zip(&s.image.pixels)
            .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
            .sum::<f64>()
            / px.len() as f64;
        let img = ImageRgb8 {
            width: wd as u32,
            height: h as u32,
            pixels: px,
        };
        if let Subject::Shape { color, .. } = s.subject
            && agrees(&img, color, s.background)
        {
            ok += 1;
        }
    }
    eprintln!("reconstructions judged right: {ok}/{b}; mean |error| {:.1} of 255", l1 / b as f64);
    assert!(ok as f64 >= 0.95 * b as f64, "{ok}/{b} reconstructions keep their colours");
}

//! The procedural training set of the embedded model: coloured shapes and simple objects
//! (faces, suns, trees, houses, ...) on coloured backgrounds, with captions that name what is
//! drawn. Every sample is a pure function of (seed, index), so the set needs no files: the
//! trainer draws from it, tests regenerate it, and `latent-studio make-dataset` writes it out
//! for inspection. Drawn with 4x4 supersampling, so edges are anti-aliased.

use crate::protocol::ImageRgb8;
use crate::rng::TorchRng;

/// Colour names and their RGB.
pub const COLORS: [(&str, [u8; 3]); 10] = [
    ("red", [214, 40, 40]),
    ("orange", [245, 135, 30]),
    ("yellow", [245, 215, 45]),
    ("green", [45, 160, 65]),
    ("blue", [40, 85, 215]),
    ("purple", [135, 60, 185]),
    ("pink", [240, 130, 180]),
    ("brown", [125, 75, 40]),
    ("black", [25, 25, 28]),
    ("white", [242, 242, 238]),
];

/// Shapes a prompt can name.
pub const SHAPES: [&str; 8] = ["circle", "square", "triangle", "star", "heart", "ring", "cross", "diamond"];

/// Objects drawn from several parts (their colours are their own).
pub const OBJECTS: [&str; 7] = ["face", "sun", "tree", "house", "flower", "moon", "apple"];

/// What one sample shows (for tests and classifiers).
#[derive(Clone, Debug, PartialEq)]
pub enum Subject {
    /// A shape of a colour (indices into [`SHAPES`] and [`COLORS`]).
    Shape { shape: usize, color: usize, large: bool },
    /// An object (index into [`OBJECTS`]); faces are happy or sad.
    Object { object: usize, happy: bool },
}

/// One training example.
#[derive(Clone, Debug)]
pub struct Sample {
    pub image: ImageRgb8,
    pub caption: String,
    pub subject: Subject,
    /// Index into [`COLORS`].
    pub background: usize,
    /// Centre of the subject in [0, 1] image coordinates.
    pub center: (f32, f32),
}

/// Uniform draws from the project's own generator (the same stream as the engine's noise).
struct Draw(TorchRng);

impl Draw {
    fn unit(&mut self) -> f32 {
        self.0.next_uniform_f32().clamp(0.0, 0.999_999)
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.unit() * n as f32) as usize).min(n - 1)
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        lo + (hi - lo) * self.unit()
    }
}

/// A layer: a coverage test in image coordinates and its colour.
type Layer = (Box<dyn Fn(f32, f32) -> bool>, [u8; 3]);

fn disc(cx: f32, cy: f32, r: f32) -> impl Fn(f32, f32) -> bool {
    move |x, y| (x - cx).powi(2) + (y - cy).powi(2) <= r * r
}

fn rect(x0: f32, y0: f32, x1: f32, y1: f32) -> impl Fn(f32, f32) -> bool {
    move |x, y| x >= x0 && x <= x1 && y >= y0 && y <= y1
}

/// Inside the triangle (a, b, c)?
fn tri(a: (f32, f32), b: (f32, f32), c: (f32, f32)) -> impl Fn(f32, f32) -> bool {
    move |x, y| {
        let s = |p: (f32, f32), q: (f32, f32)| (q.0 - p.0) * (y - p.1) - (q.1 - p.1) * (x - p.0);
        let (d1, d2, d3) = (s(a, b), s(b, c), s(c, a));
        !((d1 < 0.0 || d2 < 0.0 || d3 < 0.0) && (d1 > 0.0 || d2 > 0.0 || d3 > 0.0))
    }
}

fn shape_layer(shape: usize, cx: f32, cy: f32, r: f32) -> Box<dyn Fn(f32, f32) -> bool> {
    match SHAPES[shape] {
        "circle" => Box::new(disc(cx, cy, r)),
        "square" => Box::new(rect(cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85)),
        "triangle" => Box::new(tri((cx, cy - r), (cx - r * 0.95, cy + r * 0.75), (cx + r * 0.95, cy + r * 0.75))),
        "star" => Box::new(move |x, y| {
            let (dx, dy) = (x - cx, y - cy);
            let a = dy.atan2(dx) + std::f32::consts::FRAC_PI_2;
            let k = (a * 5.0 / std::f32::consts::TAU).rem_euclid(1.0);
            let edge = r * (0.45 + 0.55 * (2.0 * (k - 0.5)).abs());
            (dx * dx + dy * dy).sqrt() <= edge
        }),
        "heart" => Box::new(move |x, y| {
            let (u, v) = ((x - cx) / r * 1.25, -(y - cy) / r * 1.25 + 0.25);
            (u * u + v * v - 1.0).powi(3) - u * u * v.powi(3) <= 0.0
        }),
        "ring" => Box::new(move |x, y| {
            let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt();
            d <= r && d >= r * 0.6
        }),
        "cross" => Box::new(move |x, y| {
            let (dx, dy) = ((x - cx).abs(), (y - cy).abs());
            (dx <= r * 0.3 && dy <= r) || (dy <= r * 0.3 && dx <= r)
        }),
        _ => Box::new(move |x, y| (x - cx).abs() + (y - cy).abs() <= r), // diamond
    }
}

fn object_layers(object: usize, happy: bool, cx: f32, cy: f32, r: f32) -> Vec<Layer> {
    let c = |name: &str| COLORS.iter().find(|(n, _)| *n == name).map(|(_, rgb)| *rgb).unwrap_or([0, 0, 0]);
    match OBJECTS[object] {
        "face" => {
            let mouth_y = cy + r * 0.35;
            let mouth: Box<dyn Fn(f32, f32) -> bool> = Box::new(move |x, y| {
                let dx = (x - cx) / (r * 0.5);
                if dx.abs() > 1.0 {
                    return false;
                }
                // A smile curves up at the ends, a frown down.
                let curve = if happy {
                    -0.18 * r * (1.0 - dx * dx)
                } else {
                    0.18 * r * (1.0 - dx * dx) - 0.12 * r
                };
                (y - (mouth_y - curve)).abs() <= r * 0.08
            });
            vec![
                (Box::new(disc(cx, cy, r)), c("yellow")),
                (Box::new(disc(cx - r * 0.35, cy - r * 0.25, r * 0.12)), c("black")),
                (Box::new(disc(cx + r * 0.35, cy - r * 0.25, r * 0.12)), c("black")),
                (mouth, c("black")),
            ]
        }
        "sun" => vec![
            (
                Box::new(move |x, y| {
                    let (dx, dy) = (x - cx, y - cy);
                    let d = (dx * dx + dy * dy).sqrt();
                    let a = dy.atan2(dx);
                    d <= r && d >= r * 0.7 && (a * 12.0 / std::f32::consts::TAU).rem_euclid(1.0) < 0.45
                }),
                c("orange"),
            ),
            (Box::new(disc(cx, cy, r * 0.6)), c("yellow")),
        ],
        "tree" => vec![
            (Box::new(rect(cx - r * 0.15, cy, cx + r * 0.15, cy + r)), c("brown")),
            (Box::new(disc(cx, cy - r * 0.25, r * 0.65)), c("green")),
        ],
        "house" => vec![
            (Box::new(rect(cx - r * 0.7, cy - r * 0.1, cx + r * 0.7, cy + r * 0.9)), c("white")),
            (
                Box::new(tri((cx, cy - r), (cx - r * 0.95, cy - r * 0.1), (cx + r * 0.95, cy - r * 0.1))),
                c("red"),
            ),
            (
                Box::new(rect(cx - r * 0.18, cy + r * 0.35, cx + r * 0.18, cy + r * 0.9)),
                c("brown"),
            ),
        ],
        "flower" => {
            let mut v: Vec<Layer> = vec![(Box::new(rect(cx - r * 0.06, cy, cx + r * 0.06, cy + r)), c("green"))];
            for k in 0..6 {
                let a = k as f32 * std::f32::consts::TAU / 6.0;
                v.push((
                    Box::new(disc(cx + a.cos() * r * 0.4, cy - r * 0.2 + a.sin() * r * 0.4, r * 0.3)),
                    c("pink"),
                ));
            }
            v.push((Box::new(disc(cx, cy - r * 0.2, r * 0.22)), c("yellow")));
            v
        }
        "moon" => vec![(
            Box::new(move |x, y| disc(cx, cy, r)(x, y) && !disc(cx + r * 0.45, cy - r * 0.2, r * 0.85)(x, y)),
            c("yellow"),
        )],
        _ => vec![
            // apple
            (Box::new(disc(cx, cy + r * 0.1, r * 0.8)), c("red")),
            (
                Box::new(rect(cx - r * 0.05, cy - r * 0.9, cx + r * 0.05, cy - r * 0.55)),
                c("brown"),
            ),
            (Box::new(disc(cx + r * 0.22, cy - r * 0.72, r * 0.16)), c("green")),
        ],
    }
}

fn position_words(cx: f32, cy: f32) -> Option<&'static str> {
    let h = if cx < 0.4 {
        "left"
    } else if cx > 0.6 {
        "right"
    } else {
        ""
    };
    let v = if cy < 0.4 {
        "top"
    } else if cy > 0.6 {
        "bottom"
    } else {
        ""
    };
    match (v, h) {
        ("", "") => None,
        ("top", "left") => Some("in the top left"),
        ("top", "right") => Some("in the top right"),
        ("bottom", "left") => Some("in the bottom left"),
        ("bottom", "right") => Some("in the bottom right"),
        ("top", _) => Some("at the top"),
        ("bottom", _) => Some("at the bottom"),
        (_, "left") => Some("on the left"),
        _ => Some("on the right"),
    }
}

/// The colours an object (index into [`OBJECTS`]) is drawn with: its background is never one
/// of them.
pub fn object_colors(object: usize) -> &'static [&'static str] {
    match OBJECTS[object] {
        "face" => &["yellow", "black"],
        "sun" => &["yellow", "orange"],
        "tree" => &["green", "brown"],
        "house" => &["white", "red", "brown"],
        "flower" => &["pink", "green", "yellow"],
        "moon" => &["yellow"],
        _ => &["red", "brown", "green"],
    }
}

/// Sample `index` of the set drawn with `seed`, `size` x `size` pixels.
pub fn sample(seed: u64, index: u64, size: u32) -> Sample {
    draw(seed, index, size, false, &[], false)
}

/// How the denoiser's pictures are drawn from the set (`latent-studio train` options).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mix {
    /// Share of the indices (picked by a stream of their own) that are always a large shape:
    /// shape words need more of the training than colours and objects. The other indices
    /// are [`sample`]'s pictures.
    pub large_shapes: f32,
    /// The backgrounds (indices into [`COLORS`]) shapes are drawn on, never the shape's own
    /// colour; empty: any other colour, as in [`sample`]. Objects keep every background.
    pub shape_backgrounds: Vec<usize>,
    /// Share of the shapes whose caption leaves the shape's colour out ("a star on a black
    /// background"): the shape word then explains most of what the caption can predict.
    pub drop_shape_colour: f32,
}

/// Sample `index` of the set drawn with `seed`, drawn as `mix` asks; with the default mix it
/// is [`sample`]'s.
pub fn sample_mixed(seed: u64, index: u64, size: u32, mix: &Mix) -> Sample {
    let pick = Draw(TorchRng::new(seed.wrapping_mul(1_000_033).wrapping_add(index) ^ 0x1a26_e5a9)).unit();
    let drop = Draw(TorchRng::new(seed.wrapping_mul(1_000_037).wrapping_add(index) ^ 0x0c01_0a2d)).unit();
    draw(
        seed,
        index,
        size,
        pick < mix.large_shapes,
        &mix.shape_backgrounds,
        drop < mix.drop_shape_colour,
    )
}

fn draw(seed: u64, index: u64, size: u32, large_shape: bool, shape_backgrounds: &[usize], drop_colour: bool) -> Sample {
    let mut d = Draw(TorchRng::new(seed.wrapping_mul(1_000_003).wrapping_add(index)));
    let is_object = d.unit() < 0.35 && !large_shape;
    let (subject, large) = if is_object {
        let object = d.below(OBJECTS.len());
        (
            Subject::Object {
                object,
                happy: d.unit() < 0.5,
            },
            true,
        )
    } else {
        let large = d.unit() < 0.6 || large_shape;
        (
            Subject::Shape {
                shape: d.below(SHAPES.len()),
                color: d.below(COLORS.len()),
                large,
            },
            large,
        )
    };
    // A background none of the subject's parts has.
    let avoid: Vec<usize> = match &subject {
        Subject::Shape { color, .. } => vec![*color],
        Subject::Object { object, .. } => {
            let names = object_colors(*object);
            COLORS
                .iter()
                .enumerate()
                .filter(|(_, (n, _))| names.contains(n))
                .map(|(i, _)| i)
                .collect()
        }
    };
    let candidates: Vec<usize> = match &subject {
        Subject::Shape { .. } if shape_backgrounds.iter().any(|b| !avoid.contains(b) && *b < COLORS.len()) => shape_backgrounds.to_vec(),
        _ => (0..COLORS.len()).collect(),
    };
    let allowed: Vec<usize> = candidates.into_iter().filter(|i| !avoid.contains(i) && *i < COLORS.len()).collect();
    let background = allowed[d.below(allowed.len())];
    let r = if large { d.range(0.28, 0.36) } else { d.range(0.15, 0.2) };
    let (cx, cy) = if large {
        (d.range(0.4, 0.6), d.range(0.4, 0.6))
    } else {
        (d.range(0.22, 0.78), d.range(0.22, 0.78))
    };
    let layers: Vec<Layer> = match &subject {
        Subject::Shape { shape, color, .. } => vec![(shape_layer(*shape, cx, cy, r), COLORS[*color].1)],
        Subject::Object { object, happy } => object_layers(*object, *happy, cx, cy, r),
    };
    let bg = COLORS[background].1;
    let ss = 4u32;
    let mut pixels = Vec::with_capacity((size * size * 3) as usize);
    for py in 0..size {
        for px in 0..size {
            let mut acc = [0u32; 3];
            for sy in 0..ss {
                for sx in 0..ss {
                    let x = (px as f32 + (sx as f32 + 0.5) / ss as f32) / size as f32;
                    let y = (py as f32 + (sy as f32 + 0.5) / ss as f32) / size as f32;
                    let col = layers.iter().rev().find(|(inside, _)| inside(x, y)).map_or(bg, |(_, c)| *c);
                    for (a, v) in acc.iter_mut().zip(col) {
                        *a += u32::from(v);
                    }
                }
            }
            pixels.extend(acc.iter().map(|a| (a / (ss * ss)) as u8));
        }
    }
    let bg_name = COLORS[background].0;
    let a = |word: &str| if word.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" };
    let caption = match &subject {
        Subject::Shape { shape, color, large } => {
            let mut c = if drop_colour {
                let size = if *large { "" } else { "small " };
                format!("{} {size}{}", a(if *large { SHAPES[*shape] } else { "small" }), SHAPES[*shape])
            } else if *large {
                format!("{} {} {}", a(COLORS[*color].0), COLORS[*color].0, SHAPES[*shape])
            } else {
                format!("a small {} {}", COLORS[*color].0, SHAPES[*shape])
            };
            if !*large && let Some(p) = position_words(cx, cy) {
                c.push(' ');
                c.push_str(p);
            }
            format!("{c} on {} {bg_name} background", a(bg_name))
        }
        Subject::Object { object, happy } => match OBJECTS[*object] {
            "face" => format!(
                "a {} face on {} {bg_name} background",
                if *happy { "happy" } else { "sad" },
                a(bg_name)
            ),
            name => format!("{} {name} on {} {bg_name} background", a(name), a(bg_name)),
        },
    };
    Sample {
        image: ImageRgb8 {
            width: size,
            height: size,
            pixels,
        },
        caption,
        subject,
        background,
        center: (cx, cy),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pixel(img: &ImageRgb8, x: f32, y: f32) -> [u8; 3] {
        let (px, py) = ((x * img.width as f32) as u32, (y * img.height as f32) as u32);
        let i = ((py * img.width + px) * 3) as usize;
        [img.pixels[i], img.pixels[i + 1], img.pixels[i + 2]]
    }

    #[test]
    fn samples_are_deterministic_and_show_what_they_say() {
        let mut kinds = std::collections::HashSet::new();
        for i in 0..300 {
            let s = sample(7, i, 64);
            let again = sample(7, i, 64);
            assert_eq!(s.image, again.image);
            assert_eq!(s.caption, again.caption);
            assert_eq!(s.image.pixels.len(), 64 * 64 * 3);
            let bg = COLORS[s.background];
            assert!(s.caption.ends_with(&format!(" {} background", bg.0)), "{}", s.caption);
            assert!(
                !s.caption.contains(" a o") && !s.caption.contains(" a a"),
                "articles: {}",
                s.caption
            );
            // A corner shows the background.
            assert_eq!(pixel(&s.image, 0.01, 0.01), bg.1, "{}", s.caption);
            match s.subject {
                Subject::Shape { shape, color, .. } => {
                    assert!(
                        s.caption.contains(&format!("{} {}", COLORS[color].0, SHAPES[shape])),
                        "{}",
                        s.caption
                    );
                    assert_ne!(color, s.background);
                    // Shapes that cover their centre show their colour there.
                    if !matches!(SHAPES[shape], "ring" | "heart") {
                        assert_eq!(pixel(&s.image, s.center.0, s.center.1), COLORS[color].1, "{}", s.caption);
                    }
                    kinds.insert(SHAPES[shape]);
                }
                Subject::Object { object, .. } => {
                    assert!(s.caption.contains(OBJECTS[object]), "{}", s.caption);
                    kinds.insert(OBJECTS[object]);
                }
            }
        }
        assert_eq!(
            kinds.len(),
            SHAPES.len() + OBJECTS.len(),
            "every shape and object appears: {kinds:?}"
        );
        assert_ne!(sample(7, 0, 64).image, sample(8, 0, 64).image, "the seed matters");
    }

    #[test]
    fn weighted_samples_are_large_shapes_as_often_as_asked_and_otherwise_the_set() {
        let n = 2000;
        let large = |s: &Sample| matches!(s.subject, Subject::Shape { large: true, .. });
        let plain = (0..n).filter(|&i| large(&sample(3, i, 16))).count() as f64 / n as f64;
        assert!((plain - 0.39).abs() < 0.04, "the set's own share of large shapes: {plain}");
        let mut colors = std::collections::HashSet::new();
        let mut shapes = std::collections::HashSet::new();
        let mut forced = 0;
        let half = Mix {
            large_shapes: 0.5,
            ..Default::default()
        };
        for i in 0..n {
            let w = sample_mixed(3, i, 16, &half);
            if large(&w) {
                forced += 1;
                if let Subject::Shape { shape, color, .. } = w.subject {
                    colors.insert(color);
                    shapes.insert(shape);
                    assert!(
                        w.caption.starts_with(&format!(
                            "a{} {} {}",
                            if color == 1 { "n" } else { "" },
                            COLORS[color].0,
                            SHAPES[shape]
                        )),
                        "{}",
                        w.caption
                    );
                }
            } else {
                // What is not forced is the set's own sample.
                let s = sample(3, i, 16);
                assert_eq!((w.caption, w.image), (s.caption, s.image));
            }
        }
        let share = forced as f64 / n as f64;
        // 0.5 forced + 0.5 x 0.39 by chance.
        assert!((share - 0.695).abs() < 0.04, "share of large shapes: {share}");
        assert_eq!((colors.len(), shapes.len()), (COLORS.len(), SHAPES.len()));
        assert_eq!(sample_mixed(3, 5, 16, &Mix::default()).caption, sample(3, 5, 16).caption);
    }

    #[test]
    fn shapes_can_be_kept_to_some_backgrounds_and_objects_keep_theirs() {
        let (black, white) = (8, 9);
        assert_eq!((COLORS[black].0, COLORS[white].0), ("black", "white"));
        let mix = Mix {
            large_shapes: 0.0,
            shape_backgrounds: vec![black, white],
            ..Default::default()
        };
        let mut object_backgrounds = std::collections::HashSet::new();
        for i in 0..600 {
            let s = sample_mixed(4, i, 16, &mix);
            match s.subject {
                Subject::Shape { color, .. } => {
                    // White shapes go on black, black ones on white.
                    let want = if color == black {
                        vec![white]
                    } else if color == white {
                        vec![black]
                    } else {
                        vec![black, white]
                    };
                    assert!(want.contains(&s.background), "{}", s.caption);
                }
                Subject::Object { .. } => {
                    object_backgrounds.insert(s.background);
                    assert_eq!(s.caption, sample(4, i, 16).caption);
                }
            }
        }
        assert!(object_backgrounds.len() >= 6, "{object_backgrounds:?}");
    }

    #[test]
    fn shape_captions_can_leave_the_colour_out() {
        let mix = Mix {
            drop_shape_colour: 0.3,
            ..Default::default()
        };
        let (mut dropped, mut shapes) = (0, 0);
        for i in 0..1000 {
            let (m, s) = (sample_mixed(5, i, 16, &mix), sample(5, i, 16));
            // The same picture; only the caption may differ.
            assert_eq!(m.image, s.image);
            if let Subject::Shape { color, shape, .. } = m.subject {
                shapes += 1;
                if !m.caption.contains(COLORS[color].0) {
                    dropped += 1;
                    assert_eq!(
                        m.caption.replace(&format!(" {}", COLORS[color].0), "").replace("an ", "a "),
                        s.caption.replace(&format!(" {}", COLORS[color].0), "").replace("an ", "a ")
                    );
                    assert!(
                        m.caption.contains(SHAPES[shape]) && m.caption.ends_with(" background"),
                        "{}",
                        m.caption
                    );
                }
            } else {
                assert_eq!(m.caption, s.caption);
            }
        }
        let share = f64::from(dropped) / f64::from(shapes);
        assert!((share - 0.3).abs() < 0.06, "{share}");
    }
}

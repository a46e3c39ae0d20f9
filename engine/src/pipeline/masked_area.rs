//! A1111's "Only masked" inpaint area (cut the mask's neighbourhood out, repaint it at the
//! request's size, paste it back) and the "fill" masked content (the hole filled with the
//! surrounding colours, blurred).

use super::resample::{Filter, resize_image};

use crate::protocol::ImageRgb8;

/// A rectangle of a picture: columns `x0..x1`, rows `y0..y1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub x0: u32,
    pub y0: u32,
    pub x1: u32,
    pub y1: u32,
}

impl Region {
    pub fn width(&self) -> u32 {
        self.x1 - self.x0
    }

    pub fn height(&self) -> u32 {
        self.y1 - self.y0
    }
}

/// The region an "Only masked" job works on, as A1111's `get_crop_region_v2` and
/// `expand_crop_region`: the bounding box of the (blurred) mask's non-zero pixels, grown by
/// `padding` on every side within the picture, then grown along its shorter side (shifted
/// back inside the picture where it would leave it) to the aspect ratio of the `pw` x `ph`
/// the job runs at. None when the mask is empty.
pub fn crop_region(blurred: &[f32], w: u32, h: u32, padding: u32, pw: u32, ph: u32) -> Option<Region> {
    let (mut x0, mut y0, mut x1, mut y1) = (u32::MAX, u32::MAX, 0, 0);
    for y in 0..h {
        for x in 0..w {
            if blurred[(y * w + x) as usize] > 0.0 {
                (x0, y0) = (x0.min(x), y0.min(y));
                (x1, y1) = (x1.max(x + 1), y1.max(y + 1));
            }
        }
    }
    if x0 == u32::MAX {
        return None;
    }
    let boxed = Region {
        x0: x0.saturating_sub(padding),
        y0: y0.saturating_sub(padding),
        x1: (x1 + padding).min(w),
        y1: (y1 + padding).min(h),
    };
    Some(expand(boxed, pw, ph, w, h))
}

/// The region an "Only masked" job on `mask` (white = repaint, the picture's size) works
/// on: [`crop_region`] of the mask blurred by `blur`, as the pipeline computes it (for the
/// window to draw).
pub fn region_of_mask(mask: &ImageRgb8, blur: u32, padding: u32, pw: u32, ph: u32) -> Option<Region> {
    let blurred = blurred_mask(mask, blur);
    crop_region(&blurred, mask.width, mask.height, padding, pw, ph)
}

/// A1111's `expand_crop_region`: the region grown to the aspect ratio `pw : ph`.
fn expand(r: Region, pw: u32, ph: u32, w: u32, h: u32) -> Region {
    // One axis' ends grown by `want - (b - a)` (split as Python's floor division does), moved
    // back inside 0..n where they left it, and cut at n when the picture is too small.
    fn grow(a: i64, b: i64, want: f64, n: i64) -> (i64, i64) {
        let diff = (want - (b - a) as f64) as i64;
        let (mut a, mut b) = (a - diff.div_euclid(2), b + diff - diff.div_euclid(2));
        if b >= n {
            let d = b - n;
            b -= d;
            a -= d;
        }
        if a < 0 {
            b -= a;
            a = 0;
        }
        (a, b.min(n))
    }
    let (x0, y0, x1, y1) = (i64::from(r.x0), i64::from(r.y0), i64::from(r.x1), i64::from(r.y1));
    let ratio_crop = (x1 - x0) as f64 / (y1 - y0) as f64;
    let ratio_job = f64::from(pw) / f64::from(ph);
    let (x0, y0, x1, y1) = if ratio_crop > ratio_job {
        let (a, b) = grow(y0, y1, (x1 - x0) as f64 / ratio_job, i64::from(h));
        (x0, a, x1, b)
    } else {
        let (a, b) = grow(x0, x1, (y1 - y0) as f64 * ratio_job, i64::from(w));
        (a, y0, b, y1)
    };
    Region {
        x0: x0 as u32,
        y0: y0 as u32,
        x1: x1 as u32,
        y1: y1 as u32,
    }
}

/// `region` of `img` cut out (no resampling).
fn crop(img: &ImageRgb8, region: Region) -> ImageRgb8 {
    let (w, cw) = (img.width as usize, region.width() as usize);
    let mut pixels = Vec::with_capacity(cw * region.height() as usize * 3);
    for y in region.y0 as usize..region.y1 as usize {
        let row = (y * w + region.x0 as usize) * 3;
        pixels.extend_from_slice(&img.pixels[row..row + cw * 3]);
    }
    ImageRgb8 {
        width: region.width(),
        height: region.height(),
        pixels,
    }
}

/// `region` of `img` resized to `w` x `h` (Lanczos, as A1111 resizes the crop with PIL).
pub fn crop_resize(img: &ImageRgb8, region: Region, w: u32, h: u32) -> ImageRgb8 {
    resize_image(&crop(img, region), w, h, Filter::Lanczos)
}

/// `result` (the job's output) resized to `region` and pasted into a copy of `picture`.
pub fn paste_back(result: &ImageRgb8, picture: &ImageRgb8, region: Region) -> ImageRgb8 {
    let scaled = resize_image(result, region.width(), region.height(), Filter::Lanczos);
    let mut out = picture.clone();
    let (w, cw) = (picture.width as usize, region.width() as usize);
    for (i, y) in (region.y0 as usize..region.y1 as usize).enumerate() {
        let row = (y * w + region.x0 as usize) * 3;
        out.pixels[row..row + cw * 3].copy_from_slice(&scaled.pixels[i * cw * 3..(i + 1) * cw * 3]);
    }
    out
}

/// One pass of a box blur of fractional `radius` along rows (`horizontal`) or columns, edge
/// pixels repeated (PIL's `BoxBlur`): taps within the integer radius weigh 1, the two outer
/// taps the fraction, all divided by `2 * radius + 1`.
fn box_pass(src: &[f32], w: usize, h: usize, chans: usize, radius: f64, horizontal: bool) -> Vec<f32> {
    let l = radius.floor() as isize;
    let frac = (radius - radius.floor()) as f32;
    let norm = (2.0 * radius + 1.0) as f32;
    let (len, lines) = if horizontal { (w, h) } else { (h, w) };
    let at = |line: usize, i: usize| if horizontal { line * w + i } else { i * w + line };
    let mut out = vec![0f32; src.len()];
    let clamp = |i: isize| i.clamp(0, len as isize - 1) as usize;
    for line in 0..lines {
        for c in 0..chans {
            // Running sum of the whole taps, the two fractional ones added per pixel.
            let mut sum: f32 = (-l..=l).map(|k| src[at(line, clamp(k)) * chans + c]).sum();
            for i in 0..len as isize {
                let edge = src[at(line, clamp(i - l - 1)) * chans + c] + src[at(line, clamp(i + l + 1)) * chans + c];
                out[at(line, i as usize) * chans + c] = (sum + frac * edge) / norm;
                sum += src[at(line, clamp(i + l + 1)) * chans + c] - src[at(line, clamp(i - l)) * chans + c];
            }
        }
    }
    out
}

/// PIL's `GaussianBlur(radius)`: three box blurs whose radius PIL derives from the sigma.
fn gaussian(src: &[f32], w: usize, h: usize, chans: usize, sigma: f64) -> Vec<f32> {
    if sigma <= 0.0 {
        return src.to_vec();
    }
    let passes = 3.0;
    let s2 = sigma * sigma / passes;
    let big_l = (12.0 * s2 + 1.0).sqrt();
    let l = ((big_l - 1.0) / 2.0).floor();
    let a = (2.0 * l + 1.0) * (l * (l + 1.0) - 3.0 * s2) / (6.0 * (s2 - (l + 1.0) * (l + 1.0)));
    let radius = l + a;
    let mut v = src.to_vec();
    for horizontal in [true, false] {
        for _ in 0..3 {
            v = box_pass(&v, w, h, chans, radius, horizontal);
        }
    }
    v
}

/// A1111's "fill" masked content (`masking.fill`): the kept pixels (alpha 1, premultiplied)
/// blurred at radii 256, 64, 16, 4, 2 and 0 and composited over each other (1, 1, 2, 4, 2 and
/// 1 times), so the hole takes the colours around it, from far to near. Kept pixels stay as
/// they were.
pub fn fill(picture: &ImageRgb8, repaint: &[bool]) -> ImageRgb8 {
    let (w, h) = (picture.width as usize, picture.height as usize);
    // Premultiplied RGBA of the kept pixels, alpha 0 in the hole.
    let mut masked = vec![0f32; w * h * 4];
    for (i, px) in picture.pixels.chunks_exact(3).enumerate() {
        if !repaint[i] {
            masked[i * 4..i * 4 + 3].copy_from_slice(&[f32::from(px[0]), f32::from(px[1]), f32::from(px[2])]);
            masked[i * 4 + 3] = 255.0;
        }
    }
    // The composite (straight RGB, alpha in 0..1), transparent to start.
    let mut out = vec![0f32; w * h * 4];
    for (radius, repeats) in [(256.0, 1), (64.0, 1), (16.0, 2), (4.0, 4), (2.0, 2), (0.0, 1)] {
        let blurred = gaussian(&masked, w, h, 4, radius);
        for _ in 0..repeats {
            for (o, b) in out.chunks_exact_mut(4).zip(blurred.chunks_exact(4)) {
                let sa = (b[3] / 255.0).clamp(0.0, 1.0);
                if sa <= 0.0 {
                    continue;
                }
                let da = o[3];
                let oa = sa + da * (1.0 - sa);
                for c in 0..3 {
                    let s = b[c] / b[3] * 255.0;
                    o[c] = (s * sa + o[c] * da * (1.0 - sa)) / oa;
                }
                o[3] = oa;
            }
        }
    }
    let pixels = out
        .chunks_exact(4)
        .zip(picture.pixels.chunks_exact(3))
        .enumerate()
        .flat_map(|(i, (o, p))| {
            if repaint[i] {
                [0, 1, 2].map(|c| o[c].round().clamp(0.0, 255.0) as u8)
            } else {
                [p[0], p[1], p[2]]
            }
        })
        .collect();
    ImageRgb8 {
        width: picture.width,
        height: picture.height,
        pixels,
    }
}

/// Pixels of `image` in [-1, 1], planar `[3, h, w]`, with `zero` (where true) set to 0 (the
/// masked image diffusers builds: `image * (mask < 0.5)`).
pub(crate) fn pixels_of(image: &ImageRgb8, zero: Option<&[bool]>) -> (Vec<f32>, usize, usize) {
    let (w, h) = (image.width as usize, image.height as usize);
    let mut planar = vec![0f32; 3 * w * h];
    for (i, px) in image.pixels.chunks_exact(3).enumerate() {
        if zero.is_some_and(|z| z[i]) {
            continue;
        }
        for c in 0..3 {
            planar[c * w * h + i] = f32::from(px[c]) / 255.0 * 2.0 - 1.0;
        }
    }
    (planar, w, h)
}

/// The mask's pixels to repaint: PIL's `convert("L")` luminance at one half or above
/// (diffusers' `do_binarize`).
pub(crate) fn mask_bits(m: &ImageRgb8) -> Vec<bool> {
    m.pixels
        .chunks_exact(3)
        .map(|p| {
            let l = (u32::from(p[0]) * 19595 + u32::from(p[1]) * 38470 + u32::from(p[2]) * 7471 + 0x8000) >> 16;
            l >= 128
        })
        .collect()
}

/// The mask binarized (255 to repaint) and blurred as A1111 blurs it, 0..255 per pixel.
pub(crate) fn blurred_mask(mask: &ImageRgb8, blur: u32) -> Vec<f32> {
    let (w, h) = (mask.width as usize, mask.height as usize);
    let mut m: Vec<f32> = mask_bits(mask).into_iter().map(|b| if b { 255.0 } else { 0.0 }).collect();
    if blur > 0 {
        let sigma = blur as f64;
        let radius = (2.5 * sigma + 0.5) as usize;
        let kernel: Vec<f64> = (0..=2 * radius)
            .map(|i| (-((i as f64 - radius as f64).powi(2)) / (2.0 * sigma * sigma)).exp())
            .collect();
        let total: f64 = kernel.iter().sum();
        let kernel: Vec<f64> = kernel.iter().map(|k| k / total).collect();
        // Reflect-101 border: ... 2 1 | 0 1 2 ... n-1 | n-2 n-3 ...
        let reflect = |i: isize, n: usize| -> usize {
            let n = n as isize;
            if n == 1 {
                return 0;
            }
            let mut i = i;
            while i < 0 || i >= n {
                i = if i < 0 { -i } else { 2 * (n - 1) - i };
            }
            i as usize
        };
        let mut tmp = vec![0f32; w * h];
        for y in 0..h {
            for x in 0..w {
                let v: f64 = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, c)| c * f64::from(m[y * w + reflect(x as isize + k as isize - radius as isize, w)]))
                    .sum();
                // A1111 blurs in two cv2 calls on 8-bit images: rounded in between.
                tmp[y * w + x] = v.round().clamp(0.0, 255.0) as f32;
            }
        }
        for y in 0..h {
            for x in 0..w {
                let v: f64 = kernel
                    .iter()
                    .enumerate()
                    .map(|(k, c)| c * f64::from(tmp[reflect(y as isize + k as isize - radius as isize, h) * w + x]))
                    .sum();
                m[y * w + x] = v.round().clamp(0.0, 255.0) as f32;
            }
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask(w: u32, h: u32, rect: (u32, u32, u32, u32)) -> Vec<f32> {
        (0..h)
            .flat_map(|y| {
                (0..w).map(move |x| {
                    if x >= rect.0 && x < rect.2 && y >= rect.1 && y < rect.3 {
                        255.0
                    } else {
                        0.0
                    }
                })
            })
            .collect()
    }

    /// A1111's arithmetic by hand: a 20x10 box at (100, 100) in a 512x512 picture, padding 32,
    /// for a square job: 84x74 grows to 84x84, 5 rows above and 5 below.
    #[test]
    fn crop_region_as_a1111() {
        let m = mask(512, 512, (100, 100, 120, 110));
        let r = crop_region(&m, 512, 512, 32, 512, 512).expect("region");
        assert_eq!(
            r,
            Region {
                x0: 68,
                y0: 63,
                x1: 152,
                y1: 147
            }
        );
        // Odd growth: 84 wide, 75 tall -> 9 more rows, 4 above (floor) and 5 below.
        let m = mask(512, 512, (100, 100, 120, 111));
        let r = crop_region(&m, 512, 512, 32, 512, 512).expect("region");
        assert_eq!(
            r,
            Region {
                x0: 68,
                y0: 64,
                x1: 152,
                y1: 148
            }
        );
        // Near the bottom edge the grown rows move back up into the picture.
        let m = mask(512, 512, (100, 490, 200, 500));
        let r = crop_region(&m, 512, 512, 0, 512, 512).expect("region");
        assert_eq!(
            r,
            Region {
                x0: 100,
                y0: 412,
                x1: 200,
                y1: 512
            }
        );
        // A wide job (2:1) on a tall box grows the columns; at the left edge they shift right.
        let m = mask(256, 256, (0, 0, 10, 100));
        let r = crop_region(&m, 256, 256, 0, 512, 256).expect("region");
        assert_eq!(
            r,
            Region {
                x0: 0,
                y0: 0,
                x1: 200,
                y1: 100
            }
        );
        // A picture too small for the ratio: the region is cut at the picture.
        let m = mask(64, 64, (0, 0, 64, 10));
        let r = crop_region(&m, 64, 64, 0, 64, 512).expect("region");
        assert_eq!(
            r,
            Region {
                x0: 0,
                y0: 0,
                x1: 64,
                y1: 64
            }
        );
        assert_eq!(crop_region(&vec![0.0; 64], 8, 8, 4, 8, 8), None);
    }

    #[test]
    fn crop_and_paste_back_round_trip() {
        let picture = ImageRgb8 {
            width: 16,
            height: 12,
            pixels: (0..16 * 12 * 3).map(|i| (i % 251) as u8).collect(),
        };
        let r = Region {
            x0: 4,
            y0: 2,
            x1: 12,
            y1: 10,
        };
        let crop = crop_resize(&picture, r, 8, 8);
        assert_eq!(crop.pixels[..3], picture.pixels[(2 * 16 + 4) * 3..(2 * 16 + 4) * 3 + 3]);
        let big = crop_resize(&picture, r, 32, 32);
        assert_eq!((big.width, big.height), (32, 32));
        // Pasting the unchanged crop back gives the picture; a changed crop changes only `r`.
        assert_eq!(paste_back(&crop, &picture, r), picture);
        let white = ImageRgb8 {
            width: 32,
            height: 32,
            pixels: vec![255; 32 * 32 * 3],
        };
        let out = paste_back(&white, &picture, r);
        for y in 0..12u32 {
            for x in 0..16u32 {
                let i = ((y * 16 + x) * 3) as usize;
                let inside = (4..12).contains(&x) && (2..10).contains(&y);
                if inside {
                    assert_eq!(out.pixels[i..i + 3], [255, 255, 255]);
                } else {
                    assert_eq!(out.pixels[i..i + 3], picture.pixels[i..i + 3]);
                }
            }
        }
    }

    /// PIL's box radius for sigma 2 (3 passes) and a blurred constant stays constant.
    #[test]
    fn gaussian_keeps_constants_and_spreads_mass() {
        let flat = vec![7.0f32; 20 * 10];
        let b = gaussian(&flat, 20, 10, 1, 3.0);
        assert!(b.iter().all(|v| (v - 7.0).abs() < 1e-4));
        let mut dot = vec![0f32; 21 * 21];
        dot[10 * 21 + 10] = 1.0;
        let b = gaussian(&dot, 21, 21, 1, 2.0);
        let total: f32 = b.iter().sum();
        assert!((total - 1.0).abs() < 1e-4, "{total}");
        // Its variance along x is sigma^2 (the three boxes are fitted to it).
        let var: f32 = (0..21 * 21).map(|i| b[i] * ((i % 21) as f32 - 10.0).powi(2)).sum();
        assert!((var - 4.0).abs() < 0.05, "{var}");
    }

    #[test]
    fn fill_takes_the_colours_around_the_hole() {
        // Left half red, right half blue, a hole across the middle column band.
        let (w, h) = (32u32, 16u32);
        let pixels: Vec<u8> = (0..w * h)
            .flat_map(|i| if i % w < w / 2 { [200, 0, 0] } else { [0, 0, 200] })
            .collect();
        let picture = ImageRgb8 {
            width: w,
            height: h,
            pixels,
        };
        let hole: Vec<bool> = (0..w * h).map(|i| (12..20).contains(&(i % w))).collect();
        let out = fill(&picture, &hole);
        for (i, &in_hole) in hole.iter().enumerate() {
            let p = &out.pixels[i * 3..i * 3 + 3];
            if !in_hole {
                assert_eq!(p, &picture.pixels[i * 3..i * 3 + 3]);
            } else {
                assert_eq!(p[1], 0, "no green comes from red and blue");
                let x = i as u32 % w;
                // Nearer the red side more red, nearer the blue side more blue.
                if x == 12 {
                    assert!(p[0] > p[2], "{p:?}");
                }
                if x == 19 {
                    assert!(p[2] > p[0], "{p:?}");
                }
            }
        }
    }
}

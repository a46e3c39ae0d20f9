//! Fitting an init image to the request's size, A1111's three resize modes.

use image::imageops::FilterType;
use image::{RgbImage, imageops};
use latent_engine::protocol::ImageRgb8;

/// How an init image of another size is made the request's size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum, serde::Serialize, serde::Deserialize)]
pub enum ResizeMode {
    /// Stretch to the size (A1111's "Just resize").
    #[default]
    Just,
    /// Scale to cover the size and cut the overflow, centred ("Crop and resize").
    Crop,
    /// Scale to fit inside and stretch the edge pixels over the rest ("Resize and fill").
    Fill,
}

/// `img` made `w` x `h` (Lanczos filtering); unchanged when it already is.
pub fn fit(img: &RgbImage, w: u32, h: u32, mode: ResizeMode) -> ImageRgb8 {
    let (iw, ih) = img.dimensions();
    let out = if (iw, ih) == (w, h) {
        img.clone()
    } else {
        match mode {
            ResizeMode::Just => imageops::resize(img, w, h, FilterType::Lanczos3),
            ResizeMode::Crop => {
                let s = (w as f64 / iw as f64).max(h as f64 / ih as f64);
                let (sw, sh) = (((iw as f64 * s).round() as u32).max(w), ((ih as f64 * s).round() as u32).max(h));
                let scaled = imageops::resize(img, sw, sh, FilterType::Lanczos3);
                imageops::crop_imm(&scaled, (sw - w) / 2, (sh - h) / 2, w, h).to_image()
            }
            ResizeMode::Fill => {
                let s = (w as f64 / iw as f64).min(h as f64 / ih as f64);
                let (sw, sh) = (
                    ((iw as f64 * s).round() as u32).clamp(1, w),
                    ((ih as f64 * s).round() as u32).clamp(1, h),
                );
                let scaled = imageops::resize(img, sw, sh, FilterType::Lanczos3);
                let (ox, oy) = ((w - sw) / 2, (h - sh) / 2);
                RgbImage::from_fn(w, h, |x, y| {
                    let sx = x.saturating_sub(ox).min(sw - 1);
                    let sy = y.saturating_sub(oy).min(sh - 1);
                    *scaled.get_pixel(sx, sy)
                })
            }
        }
    };
    ImageRgb8 {
        width: out.width(),
        height: out.height(),
        pixels: out.into_raw(),
    }
}

/// Outpainting's picture and mask: `img` extended by `left, top, right, bottom` pixels, the
/// new border filled by stretching the edge pixels outwards, and a mask that is white (to
/// paint) on the border and black (to keep) on the original.
pub fn outpaint(img: &RgbImage, [left, top, right, bottom]: [u32; 4]) -> (RgbImage, RgbImage) {
    let (w, h) = img.dimensions();
    let (nw, nh) = (w + left + right, h + top + bottom);
    let picture = RgbImage::from_fn(nw, nh, |x, y| {
        let sx = x.saturating_sub(left).min(w - 1);
        let sy = y.saturating_sub(top).min(h - 1);
        *img.get_pixel(sx, sy)
    });
    let mask = RgbImage::from_fn(nw, nh, |x, y| {
        let inside = x >= left && x < left + w && y >= top && y < top + h;
        if inside {
            image::Rgb([0, 0, 0])
        } else {
            image::Rgb([255, 255, 255])
        }
    });
    (picture, mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_mode_gives_the_size_and_keeps_what_it_should() {
        // Left half red, right half blue, 40x20.
        let img = RgbImage::from_fn(
            40,
            20,
            |x, _| if x < 20 { image::Rgb([255, 0, 0]) } else { image::Rgb([0, 0, 255]) },
        );
        for mode in [ResizeMode::Just, ResizeMode::Crop, ResizeMode::Fill] {
            let out = fit(&img, 32, 32, mode);
            assert_eq!((out.width, out.height, out.pixels.len()), (32, 32, 32 * 32 * 3), "{mode:?}");
        }
        let px = |o: &ImageRgb8, x: u32, y: u32| {
            let i = ((y * o.width + x) * 3) as usize;
            [o.pixels[i], o.pixels[i + 1], o.pixels[i + 2]]
        };
        // Crop keeps the middle: both colours meet at the centre, the sides are cut.
        let crop = fit(&img, 32, 32, ResizeMode::Crop);
        assert_eq!(px(&crop, 0, 16), [255, 0, 0]);
        assert_eq!(px(&crop, 31, 16), [0, 0, 255]);
        // Fill letterboxes: the top row repeats the image's first row.
        let fill = fit(&img, 32, 32, ResizeMode::Fill);
        assert_eq!(px(&fill, 2, 0), px(&fill, 2, 12));
        // Outpainting: the size grows, the border is painted, the original kept.
        let (pic, mask) = outpaint(&img, [8, 0, 16, 4]);
        assert_eq!(pic.dimensions(), (64, 24));
        assert_eq!(pic.get_pixel(0, 0), img.get_pixel(0, 0));
        assert_eq!(pic.get_pixel(63, 23), img.get_pixel(39, 19));
        assert_eq!(mask.get_pixel(7, 0)[0], 255);
        assert_eq!(mask.get_pixel(8, 0)[0], 0);
        assert_eq!(mask.get_pixel(47, 19)[0], 0);
        assert_eq!(mask.get_pixel(48, 19)[0], 255);
        assert_eq!(mask.get_pixel(20, 20)[0], 255);
        // The same size is untouched.
        assert_eq!(fit(&img, 40, 20, ResizeMode::Crop).pixels, img.into_raw());
    }
}

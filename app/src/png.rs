//! PNG files on disk: which paths are PNGs, and decoding one with its A1111 `parameters`
//! text (the history, drops, and `train-lora --images` read them).

use std::path::Path;

use latent_engine::image_io::read_png_parameters;
use latent_engine::protocol::ImageRgb8;

/// Whether `p` has a `.png` extension (any case).
pub fn is_png(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"))
}

/// Decodes a PNG to RGB and reads its `parameters` text.
pub fn decode_png(path: &Path) -> Result<(ImageRgb8, Option<String>), String> {
    decode_picture(path).map(|(img, _, parameters)| (img, parameters))
}

/// A decoded picture: its RGB pixels, its alpha channel when some pixel is transparent, and
/// its `parameters` text.
pub type Picture = (ImageRgb8, Option<Vec<u8>>, Option<String>);

/// Decodes a picture to RGB, with its alpha channel when it has transparent pixels, and
/// reads its `parameters` text.
pub fn decode_picture(path: &Path) -> Result<Picture, String> {
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let alpha = img
        .color()
        .has_alpha()
        .then(|| img.to_rgba8().pixels().map(|p| p[3]).collect::<Vec<u8>>());
    let alpha = alpha.filter(|a| a.iter().any(|&v| v < 255));
    let img = img.to_rgb8();
    let parameters = read_png_parameters(path).ok().flatten();
    Ok((
        ImageRgb8 {
            width: img.width(),
            height: img.height(),
            pixels: img.into_raw(),
        },
        alpha,
        parameters,
    ))
}

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
    let img = image::open(path).map_err(|e| format!("{}: {e}", path.display()))?.to_rgb8();
    let parameters = read_png_parameters(path).ok().flatten();
    Ok((
        ImageRgb8 {
            width: img.width(),
            height: img.height(),
            pixels: img.into_raw(),
        },
        parameters,
    ))
}

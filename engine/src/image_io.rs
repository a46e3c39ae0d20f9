//! PNG output with the A1111 `parameters` chunk, written atomically and never over an
//! existing file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::protocol::ImageRgb8;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Encodes `image` as PNG bytes with a `parameters` text chunk (tEXt when Latin-1, else iTXt).
pub fn encode_png(image: &ImageRgb8, parameters: &str) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, image.width, image.height);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let latin1 = parameters.chars().all(|c| (c as u32) < 256);
        let text_err = |e: png::EncodingError| EngineError::Other(format!("PNG text chunk: {e}"));
        if latin1 {
            enc.add_text_chunk("parameters".into(), parameters.into()).map_err(text_err)?;
        } else {
            enc.add_itxt_chunk("parameters".into(), parameters.into()).map_err(text_err)?;
        }
        let mut w = enc.write_header().map_err(|e| EngineError::Other(format!("PNG: {e}")))?;
        w.write_image_data(&image.pixels)
            .map_err(|e| EngineError::Other(format!("PNG: {e}")))?;
    }
    Ok(buf)
}

/// Reads the `parameters` text of a PNG, if it has one.
pub fn read_png_parameters(path: &Path) -> Result<Option<String>> {
    let file = std::fs::File::open(path).map_err(io(path))?;
    png_parameters(std::io::BufReader::new(file)).map_err(|e| EngineError::Other(format!("{}: not a PNG ({e})", path.display())))
}

/// The `parameters` text of PNG bytes, if it has one.
pub fn png_bytes_parameters(bytes: &[u8]) -> Result<Option<String>> {
    png_parameters(std::io::Cursor::new(bytes)).map_err(|e| EngineError::InvalidRequest(format!("not a PNG ({e})")))
}

fn png_parameters(read: impl std::io::BufRead + std::io::Seek) -> std::result::Result<Option<String>, png::DecodingError> {
    let reader = png::Decoder::new(read).read_info()?;
    let info = reader.info();
    if let Some(t) = info.uncompressed_latin1_text.iter().find(|t| t.keyword == "parameters") {
        return Ok(Some(t.text.clone()));
    }
    if let Some(t) = info.utf8_text.iter().find(|t| t.keyword == "parameters") {
        return Ok(t.get_text().ok());
    }
    if let Some(t) = info.compressed_latin1_text.iter().find(|t| t.keyword == "parameters") {
        return Ok(t.get_text().ok());
    }
    Ok(None)
}

/// Reads a PNG as 8-bit RGB (grey, palette and 16-bit images converted; alpha dropped).
/// A damaged or foreign file is one clear error naming it.
pub fn read_png_rgb(path: &Path) -> Result<ImageRgb8> {
    let bad = |why: String| crate::error::EngineError::InvalidRequest(format!("cannot read {} as a PNG image: {why}", path.display()));
    let file = std::fs::File::open(path).map_err(|source| crate::error::EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut decoder = png::Decoder::new(std::io::BufReader::new(file));
    decoder.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut reader = decoder.read_info().map_err(|e| bad(e.to_string()))?;
    let mut buf = vec![0; reader.output_buffer_size().ok_or_else(|| bad("too large".into()))?];
    let info = reader.next_frame(&mut buf).map_err(|e| bad(e.to_string()))?;
    buf.truncate(info.buffer_size());
    let channels = match info.color_type {
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Indexed => return Err(bad("palette not expanded".into())),
    };
    let pixels = buf
        .chunks_exact(channels)
        .flat_map(|px| if channels >= 3 { [px[0], px[1], px[2]] } else { [px[0]; 3] })
        .collect();
    Ok(ImageRgb8 {
        width: info.width,
        height: info.height,
        pixels,
    })
}

/// Writes `bytes` to `dest` atomically without ever replacing an existing file: the data goes
/// to a temporary file in the same folder, which is then hard-linked into place (fails if
/// `dest` exists) or, where links are unsupported, renamed after a final existence check.
pub fn write_new_file(dest: &Path, bytes: &[u8]) -> Result<()> {
    if dest.exists() {
        return Err(EngineError::Io {
            path: dest.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "file exists; refusing to overwrite it"),
        });
    }
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = dest.file_name().and_then(|n| n.to_str()).unwrap_or("image");
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
        drop(f);
        match std::fs::hard_link(&tmp, dest) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(io(dest)(e)),
            Err(_) => {
                if dest.exists() {
                    return Err(EngineError::Io {
                        path: dest.to_path_buf(),
                        source: std::io::Error::new(std::io::ErrorKind::AlreadyExists, "file exists"),
                    });
                }
                std::fs::rename(&tmp, dest).map_err(io(dest))
            }
        }
    })();
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Serialises latents as a safetensors file holding one f32 tensor named `latents`.
pub fn latents_safetensors(latents: &crate::protocol::LatentsOut) -> Result<Vec<u8>> {
    let bytes: Vec<u8> = latents.data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, latents.shape.clone(), &bytes)
        .map_err(|e| EngineError::Other(format!("latents: {e}")))?;
    safetensors::serialize([("latents", view)], None).map_err(|e| EngineError::Other(format!("latents: {e}")))
}

/// The files kept beside an image made from a picture, so it can be made again: `x.png` ->
/// `x.init.png` (`kind` "init") or `x.mask.png` ("mask").
pub fn sidecar(image: &Path, kind: &str) -> PathBuf {
    let stem = image.file_stem().and_then(|s| s.to_str()).unwrap_or("image");
    image.with_file_name(format!("{stem}.{kind}.png"))
}

/// Whether `path` is such a kept picture or mask (not an image of the history).
pub fn is_sidecar(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(".init.png") || n.ends_with(".mask.png"))
}

/// `dir/prefix-NNNNN.png` with the first free number (for automatic output names).
pub fn next_free_name(dir: &Path, prefix: &str) -> PathBuf {
    (1..)
        .map(|i| dir.join(format!("{prefix}-{i:05}.png")))
        .find(|p| !p.exists())
        .unwrap_or_else(|| dir.join(format!("{prefix}.png")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn png_round_trip_and_no_overwrite() {
        let dir = std::env::temp_dir().join(format!("latent-io-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmp dir");
        let img = ImageRgb8 {
            width: 2,
            height: 1,
            pixels: vec![255, 0, 0, 0, 255, 0],
        };
        let p = dir.join("a.png");
        let _ = std::fs::remove_file(&p);
        write_new_file(&p, &encode_png(&img, "cat\nSteps: 1, Seed: 2, Size: 2x1").expect("encode")).expect("write");
        assert_eq!(
            read_png_parameters(&p).expect("read").as_deref(),
            Some("cat\nSteps: 1, Seed: 2, Size: 2x1")
        );
        let before = std::fs::read(&p).expect("read");
        assert!(write_new_file(&p, b"other").is_err());
        assert_eq!(std::fs::read(&p).expect("read"), before);
        let u = dir.join("u.png");
        let _ = std::fs::remove_file(&u);
        write_new_file(&u, &encode_png(&img, "猫\nSteps: 1, Seed: 2, Size: 2x1").expect("encode")).expect("write");
        assert_eq!(
            read_png_parameters(&u).expect("read").as_deref(),
            Some("猫\nSteps: 1, Seed: 2, Size: 2x1")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! The training commands: `make-dataset`, and the folder reader of `train-lora`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use latent_engine::image_io::{encode_png, write_new_file};

/// `make-dataset`: the procedural set as PNG files with captions (and a contact sheet).
pub fn make_dataset(out: &Path, count: u64, seed: u64, size: u32, sheet: Option<&Path>) -> Result<()> {
    use latent_engine::train::dataset::sample;
    if !(16..=512).contains(&size) {
        bail!("--size must be between 16 and 512");
    }
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!("{} exists and is not empty; choose a new folder", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut captions = String::new();
    let grid = 8u32;
    let mut sheet_px = vec![0u8; (grid * size * grid * size * 3) as usize];
    for i in 0..count {
        let s = sample(seed, i, size);
        let name = format!("{i:06}.png");
        write_new_file(&out.join(&name), &encode_png(&s.image, &s.caption)?)?;
        captions.push_str(&serde_json::json!({"file": name, "caption": s.caption}).to_string());
        captions.push('\n');
        if i < u64::from(grid * grid) {
            let (gx, gy) = ((i as u32 % grid) * size, (i as u32 / grid) * size);
            for y in 0..size {
                let src = (y * size * 3) as usize;
                let dst = (((gy + y) * grid * size + gx) * 3) as usize;
                sheet_px[dst..dst + (size * 3) as usize].copy_from_slice(&s.image.pixels[src..src + (size * 3) as usize]);
            }
        }
    }
    write_new_file(&out.join("captions.jsonl"), captions.as_bytes())?;
    if let Some(path) = sheet {
        let img = latent_engine::ImageRgb8 {
            width: grid * size,
            height: grid * size,
            pixels: sheet_px,
        };
        write_new_file(path, &encode_png(&img, "")?)?;
    }
    println!("wrote {count} images and captions.jsonl to {}", out.display());
    Ok(())
}

/// PNG pictures of a folder with captions: `NAME.txt` beside the picture, else the prompt of
/// its A1111 parameters, else the file name (`red_fox` -> "red fox").
pub fn training_pictures(dir: &Path) -> Result<Vec<(latent_engine::ImageRgb8, String)>> {
    let mut out = vec![];
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| crate::files::is_png(p))
        .collect();
    files.sort();
    for p in files {
        let Ok((image, params)) = crate::files::decode_png(&p) else {
            eprintln!("skipping {} (not a readable PNG)", p.display());
            continue;
        };
        let caption = std::fs::read_to_string(p.with_extension("txt"))
            .ok()
            .map(|s| s.trim().to_string())
            .or_else(|| params.and_then(|t| latent_engine::metadata::Parameters::parse(&t).map(|p| p.prompt)))
            .unwrap_or_else(|| {
                p.file_stem()
                    .map(|s| s.to_string_lossy().replace(['_', '-'], " "))
                    .unwrap_or_default()
            });
        out.push((image, caption));
    }
    if out.is_empty() {
        bail!("{} has no PNG pictures to train on", dir.display());
    }
    Ok(out)
}

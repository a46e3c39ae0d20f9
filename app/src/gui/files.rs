//! The window's file work, none of it on the UI thread's hot path: what a dropped file is,
//! which models and LoRAs the user's folders hold, and a named thread that saves finished
//! images and reads the history back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender, TrySendError};
use latent_engine::image_io::{encode_png, next_free_name, write_new_file};
use latent_engine::protocol::{ImageRgb8, JobId};

use crate::png::{decode_png, is_png};

/// What a file given to the window (dropped, opened) is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileKind {
    /// A checkpoint (.safetensors) or a diffusers folder.
    Model,
    /// A LoRA / LyCORIS file.
    Lora,
    /// An image: its A1111 metadata restores the settings.
    Image,
    /// Something we do not open; the text says why.
    Unsupported(String),
}

/// Reads only the safetensors header (at most 100 MB) and returns its tensor names.
pub fn safetensors_keys(path: &Path) -> Option<Vec<String>> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).ok()?;
    let n = u64::from_le_bytes(len);
    if n > 100_000_000 {
        return None;
    }
    let mut buf = vec![0u8; n as usize];
    f.read_exact(&mut buf).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&buf).ok()?;
    Some(v.as_object()?.keys().filter(|k| *k != "__metadata__").cloned().collect())
}

/// LoRA and LyCORIS tensor-name markers (kohya, PEFT, LoHa, LoKr, DoRA).
fn is_lora_key(k: &str) -> bool {
    [
        "lora_down",
        "lora_up",
        "lora_A",
        "lora_B",
        "hada_w1",
        "lokr_w1",
        "lora.down",
        "lora.up",
        "lora_linear_layer",
    ]
    .iter()
    .any(|m| k.contains(m))
}

/// Decides what `path` is from its extension and, for safetensors, its tensor names.
pub fn classify(path: &Path) -> FileKind {
    if path.is_dir() {
        return if path.join("model_index.json").exists() || path.join("unet").is_dir() {
            FileKind::Model
        } else {
            FileKind::Unsupported(format!(
                "{} is a folder but not a diffusers model (no model_index.json)",
                path.display()
            ))
        };
    }
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or_default().to_ascii_lowercase();
    match ext.as_str() {
        "png" => FileKind::Image,
        // stable-diffusion.cpp / ComfyUI-GGUF checkpoints (the engine dequantizes them).
        "gguf" if latent_engine::checkpoint::gguf::is_gguf(path) => FileKind::Model,
        "gguf" => FileKind::Unsupported(format!("{} is not a GGUF file (no GGUF magic)", path.display())),
        "safetensors" => match safetensors_keys(path) {
            Some(keys) if keys.iter().any(|k| is_lora_key(k)) => FileKind::Lora,
            Some(keys) if !keys.is_empty() => FileKind::Model,
            _ => FileKind::Unsupported(format!("{} is not a readable safetensors file", path.display())),
        },
        "ckpt" | "pt" | "pth" | "bin" => FileKind::Unsupported(format!(
            "{} is a pickle file, which can run code when loaded; Latent Studio opens only .safetensors (convert it with a trusted tool first)",
            path.display()
        )),
        _ => FileKind::Unsupported(format!("{}: not a model, LoRA or PNG", path.display())),
    }
}

/// Folders inside `root` where A1111 and ComfyUI keep things of one kind, plus `root` itself.
fn candidates(root: &Path, subdirs: &[&str]) -> Vec<PathBuf> {
    let mut out = vec![root.to_path_buf()];
    for s in subdirs {
        for base in [root.join("models"), root.to_path_buf()] {
            let d = base.join(s);
            if d.is_dir() && !out.contains(&d) {
                out.push(d);
            }
        }
    }
    out
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>, keep: &dyn Fn(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            if p.join("model_index.json").exists() {
                if keep(&p) && !out.contains(&p) {
                    out.push(p);
                }
            } else if depth > 0 {
                walk(&p, depth - 1, out, keep);
            }
        } else if p
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("safetensors") || e.eq_ignore_ascii_case("gguf"))
            && keep(&p)
            && !out.contains(&p)
        {
            out.push(p);
        }
    }
}

/// Checkpoints (safetensors files that are not LoRAs, GGUF files, and diffusers folders) in the user's
/// model folders; an A1111 (`models/Stable-diffusion`) or ComfyUI (`models/checkpoints`)
/// install folder may be given as is.
pub fn scan_models(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = vec![];
    for d in dirs {
        // ComfyUI keeps UNet-only files (ComfyUI-GGUF's among them) in models/unet and
        // models/diffusion_models; they open with a components checkpoint.
        for c in candidates(d, &["Stable-diffusion", "checkpoints", "unet", "diffusion_models"]) {
            walk(&c, 2, &mut out, &|p| classify(p) == FileKind::Model);
        }
    }
    out
}

/// What the picker says of each model file before it is opened, from its header only: a
/// GGUF file's weight types ("GGUF q8_0 94%, f32 6%"), "UNet only" for files that need a
/// components checkpoint, a header that cannot be read. Plain checkpoints get no note.
pub fn model_notes(models: &[PathBuf]) -> std::collections::HashMap<PathBuf, String> {
    let mut out = std::collections::HashMap::new();
    for p in models.iter().filter(|p| p.is_file()) {
        let gguf = p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"));
        let note = if gguf {
            match latent_engine::checkpoint::gguf::describe(p) {
                Ok(d) => format!("GGUF {d}"),
                Err(e) => format!("unreadable: {e}"),
            }
        } else {
            match safetensors_keys(p) {
                Some(keys) if !latent_engine::checkpoint::unet_only_prefix(&keys).is_empty() => "UNet only".to_string(),
                _ => continue,
            }
        };
        out.insert(p.clone(), note);
    }
    out
}

/// LoRA files in the LoRA folders and in the `models/Lora` (A1111) or `models/loras`
/// (ComfyUI) folders of the model folders.
pub fn scan_loras(dirs: &[PathBuf]) -> Vec<PathBuf> {
    let mut out = vec![];
    for d in dirs {
        for c in candidates(d, &["Lora", "loras", "LyCORIS"]) {
            walk(&c, 2, &mut out, &|p| p.is_file() && classify(p) == FileKind::Lora);
        }
    }
    out
}

/// Safetensors files in the `subdirs` of the model folders: VAE files (`VAE`, `vae`: A1111's
/// `models/VAE`, ComfyUI's `models/vae`) or tiny decoders (`VAE-approx`, `vae_approx`).
pub fn scan_vaes(dirs: &[PathBuf], subdirs: &[&str]) -> Vec<PathBuf> {
    let mut out = vec![];
    for d in dirs {
        for c in candidates(d, subdirs).into_iter().skip(1) {
            walk(&c, 1, &mut out, &|p| p.is_file() && classify(p) != FileKind::Lora);
        }
    }
    out
}

/// The `embeddings` folders of the model folders (A1111's `embeddings/`, ComfyUI's
/// `models/embeddings`); the engine also looks beside each checkpoint it loads.
pub fn embedding_dirs(model_dirs: &[PathBuf]) -> Vec<PathBuf> {
    model_dirs
        .iter()
        .flat_map(|d| [d.join("embeddings"), d.join("models").join("embeddings")])
        .filter(|d| d.is_dir())
        .collect()
}

/// Work for the file thread.
pub enum FileJob {
    /// Save a finished image into `dir` under a fresh name.
    Save {
        job: JobId,
        dir: PathBuf,
        image: Arc<ImageRgb8>,
        parameters: String,
        /// The init picture and mask it was made from, saved beside it ("init", "mask").
        kept: Vec<(&'static str, Arc<ImageRgb8>)>,
    },
    /// Read the newest `limit` PNGs of `dir` back as history thumbnails.
    LoadHistory { dir: PathBuf, limit: usize },
    /// Decode one image fully (a history item clicked).
    Open { path: PathBuf },
    /// Write the solver lab's report (grid, cells, CSV, plot) into a new folder of `dir`.
    SaveLab {
        dir: PathBuf,
        request: Box<latent_engine::protocol::CompareRequest>,
        cells: Vec<latent_engine::protocol::CompareCell>,
        reference: (Arc<ImageRgb8>, String),
    },
}

/// What the file thread reports.
pub enum FileEvent {
    Saved {
        job: JobId,
        path: PathBuf,
    },
    SaveFailed {
        job: JobId,
        error: String,
    },
    /// The solver lab's report was written into this folder (or why not).
    LabSaved(Result<PathBuf, String>),
    /// A history image from disk: thumbnail plus its parameters.
    Found {
        path: PathBuf,
        thumb: ImageRgb8,
        size: [u32; 2],
        parameters: String,
    },
    Opened {
        path: PathBuf,
        image: ImageRgb8,
        parameters: Option<String>,
    },
    OpenFailed {
        path: PathBuf,
        error: String,
    },
}

/// The file thread's handle.
pub struct FileWorker {
    jobs: Sender<FileJob>,
    pub events: Receiver<FileEvent>,
}

impl FileWorker {
    /// Starts the thread; `waker` repaints the window after each event.
    pub fn spawn(waker: impl Fn() + Send + 'static) -> std::io::Result<Self> {
        let (jtx, jrx) = crossbeam_channel::bounded::<FileJob>(256);
        let (etx, erx) = crossbeam_channel::bounded::<FileEvent>(1024);
        std::thread::Builder::new().name("latent-files".into()).spawn(move || {
            for job in jrx {
                let send = |e: FileEvent| {
                    let ok = etx.send(e).is_ok();
                    waker();
                    ok
                };
                let alive = match job {
                    FileJob::Save {
                        job,
                        dir,
                        image,
                        parameters,
                        kept,
                    } => send(
                        match save(
                            &dir,
                            &image,
                            &parameters,
                            &kept.iter().map(|(k, i)| (*k, i.as_ref())).collect::<Vec<_>>(),
                        ) {
                            Ok(path) => FileEvent::Saved { job, path },
                            Err(error) => FileEvent::SaveFailed { job, error },
                        },
                    ),
                    FileJob::LoadHistory { dir, limit } => {
                        let mut alive = true;
                        for path in newest_pngs(&dir, limit) {
                            if let Ok((image, parameters)) = decode_png(&path) {
                                let size = [image.width, image.height];
                                let thumb = thumbnail(&image, 160);
                                alive = send(FileEvent::Found {
                                    path,
                                    thumb,
                                    size,
                                    parameters: parameters.unwrap_or_default(),
                                });
                                if !alive {
                                    break;
                                }
                            }
                        }
                        alive
                    }
                    FileJob::SaveLab {
                        dir,
                        request,
                        cells,
                        reference,
                    } => {
                        // A fresh folder: solver-lab-001, -002, ... (never one that exists).
                        let out = (1..10_000)
                            .map(|n| dir.join(format!("solver-lab-{n:03}")))
                            .find(|p| !p.exists())
                            .unwrap_or_else(|| dir.join("solver-lab"));
                        let title = crate::lab_report::title(&request);
                        let r = crate::lab_report::write(&out, &request, &cells, (&reference.0, &reference.1), &title);
                        send(FileEvent::LabSaved(r.map(|()| out)))
                    }
                    FileJob::Open { path } => send(match decode_png(&path) {
                        Ok((image, parameters)) => FileEvent::Opened { path, image, parameters },
                        Err(error) => FileEvent::OpenFailed { path, error },
                    }),
                };
                if !alive {
                    break;
                }
            }
        })?;
        Ok(Self { jobs: jtx, events: erx })
    }

    /// Queues work without blocking.
    pub fn send(&self, job: FileJob) -> Result<(), String> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => "the file queue is full".to_string(),
            TrySendError::Disconnected(_) => "the file thread has stopped".to_string(),
        })
    }
}

/// Writes the PNG under the first free `latent-NNNNN.png` name; never replaces a file (a
/// name taken between the check and the write moves on to the next one).
pub fn save(dir: &Path, image: &ImageRgb8, parameters: &str, kept: &[(&str, &ImageRgb8)]) -> Result<PathBuf, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the output folder {}: {e}", dir.display()))?;
    let bytes = encode_png(image, parameters).map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..20 {
        let path = next_free_name(dir, "latent");
        match write_new_file(&path, &bytes) {
            Ok(()) => {
                // The picture and mask it was made from, beside it (never over a file).
                for (kind, img) in kept {
                    let side = latent_engine::image_io::sidecar(&path, kind);
                    let b = encode_png(img, &format!("{kind} of {}", path.display())).map_err(|e| e.to_string())?;
                    write_new_file(&side, &b).map_err(|e| format!("the image was saved, its {kind} picture not: {e}"))?;
                }
                return Ok(path);
            }
            Err(e) => last = e.to_string(),
        }
        if !path.exists() {
            break;
        }
    }
    Err(format!("could not save the image into {}: {last}", dir.display()))
}

/// The newest PNG files of a folder (by modification time, then name).
pub fn newest_pngs(dir: &Path, limit: usize) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return vec![] };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_png(p) && !latent_engine::image_io::is_sidecar(p))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .collect();
    files.sort_by(|a, b| b.cmp(a));
    files.into_iter().take(limit).map(|(_, p)| p).collect()
}

/// Box-filtered thumbnail whose longer side is at most `max` pixels.
pub fn thumbnail(img: &ImageRgb8, max: u32) -> ImageRgb8 {
    let (w, h) = (img.width.max(1), img.height.max(1));
    let scale = (w.max(h) as f64 / max as f64).max(1.0);
    let (tw, th) = (
        ((w as f64 / scale).round() as u32).max(1),
        ((h as f64 / scale).round() as u32).max(1),
    );
    let mut pixels = Vec::with_capacity((tw * th * 3) as usize);
    for ty in 0..th {
        let (y0, y1) = (ty * h / th, ((ty + 1) * h / th).max(ty * h / th + 1));
        for tx in 0..tw {
            let (x0, x1) = (tx * w / tw, ((tx + 1) * w / tw).max(tx * w / tw + 1));
            let mut acc = [0u32; 3];
            for y in y0..y1.min(h) {
                for x in x0..x1.min(w) {
                    let i = ((y * w + x) * 3) as usize;
                    for (c, a) in acc.iter_mut().enumerate() {
                        *a += u32::from(img.pixels.get(i + c).copied().unwrap_or(0));
                    }
                }
            }
            let n = ((y1.min(h) - y0) * (x1.min(w) - x0)).max(1);
            pixels.extend(acc.iter().map(|v| (v / n) as u8));
        }
    }
    ImageRgb8 {
        width: tw,
        height: th,
        pixels,
    }
}

/// Shows `path` in the system's file manager (without blocking).
pub fn reveal(path: &Path) -> Result<(), String> {
    let dir = if path.is_dir() {
        path
    } else {
        path.parent().unwrap_or(Path::new("."))
    };
    let spawned = if cfg!(target_os = "macos") {
        std::process::Command::new("open").arg("-R").arg(path).spawn()
    } else if cfg!(target_os = "windows") {
        std::process::Command::new("explorer")
            .arg(format!("/select,{}", path.display()))
            .spawn()
    } else {
        std::process::Command::new("xdg-open").arg(dir).spawn()
    };
    spawned
        .map(|_| ())
        .map_err(|e| format!("cannot open the file manager for {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("latent-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("tmp dir");
        d
    }

    fn write_safetensors(path: &Path, names: &[&str]) {
        let data = [0u8; 4];
        let views: Vec<(String, safetensors::tensor::TensorView)> = names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1], &data).expect("view"),
                )
            })
            .collect();
        std::fs::write(path, safetensors::serialize(views, None).expect("serialise")).expect("write");
    }

    #[test]
    fn classifies_files_and_finds_a1111_and_comfy_layouts() {
        let root = tmp("layouts");
        let a1111 = root.join("webui/models/Stable-diffusion");
        let a1111_lora = root.join("webui/models/Lora/styles");
        let comfy = root.join("comfy/models/checkpoints");
        let comfy_lora = root.join("comfy/models/loras");
        let comfy_unet = root.join("comfy/models/unet");
        for d in [&a1111, &a1111_lora, &comfy, &comfy_lora, &comfy_unet] {
            std::fs::create_dir_all(d).expect("dir");
        }
        write_safetensors(&a1111.join("v15.safetensors"), &["model.diffusion_model.input_blocks.0.0.weight"]);
        write_safetensors(&comfy.join("xl.safetensors"), &["conditioner.embedders.0.x"]);
        write_safetensors(&a1111_lora.join("ink.safetensors"), &["lora_unet_down_blocks_0.lora_down.weight"]);
        write_safetensors(&comfy_lora.join("peft.safetensors"), &["unet.a.lora_A.weight"]);
        write_safetensors(
            &comfy_unet.join("unet-only.safetensors"),
            &["input_blocks.0.0.weight", "time_embed.0.weight"],
        );
        std::fs::write(comfy.join("old.ckpt"), b"PK").expect("write");
        std::fs::write(comfy.join("broken.safetensors"), b"xx").expect("write");
        std::fs::write(a1111.join("v15-q8_0.gguf"), b"GGUF\x03\0\0\0").expect("write");
        std::fs::write(a1111.join("fake.gguf"), b"PK\x03\x04").expect("write");

        let roots = vec![root.join("webui"), root.join("comfy")];
        let models = scan_models(&roots);
        assert_eq!(
            models,
            vec![
                a1111.join("v15-q8_0.gguf"),
                a1111.join("v15.safetensors"),
                comfy.join("xl.safetensors"),
                comfy_unet.join("unet-only.safetensors")
            ]
        );
        // The picker's notes: UNet-only files (which open with a components checkpoint) and
        // GGUF headers; a GGUF header that ends early says so.
        let notes = model_notes(&models);
        assert_eq!(
            notes.get(&comfy_unet.join("unet-only.safetensors")).map(String::as_str),
            Some("UNet only")
        );
        assert!(
            notes.get(&a1111.join("v15-q8_0.gguf")).is_some_and(|n| n.starts_with("unreadable")),
            "{notes:?}"
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
        assert!(matches!(classify(&a1111.join("fake.gguf")), FileKind::Unsupported(m) if m.contains("not a GGUF")));
        let loras = scan_loras(&roots);
        assert_eq!(loras, vec![a1111_lora.join("ink.safetensors"), comfy_lora.join("peft.safetensors")]);

        assert_eq!(classify(&a1111_lora.join("ink.safetensors")), FileKind::Lora);
        assert_eq!(classify(&comfy.join("xl.safetensors")), FileKind::Model);
        assert!(matches!(classify(&comfy.join("old.ckpt")), FileKind::Unsupported(m) if m.contains("pickle")));
        assert!(matches!(classify(&comfy.join("broken.safetensors")), FileKind::Unsupported(_)));
        assert!(matches!(classify(&root), FileKind::Unsupported(_)));
        assert_eq!(classify(Path::new("x.PNG")), FileKind::Image);
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn saves_never_overwrite_and_read_back() {
        let dir = tmp("save");
        let img = ImageRgb8 {
            width: 4,
            height: 2,
            pixels: (0..24).map(|v| v as u8 * 10).collect(),
        };
        let a = save(&dir, &img, "a\nSteps: 1, Seed: 1, Size: 4x2", &[]).expect("save");
        let before = std::fs::read(&a).expect("read");
        let b = save(&dir, &img, "b\nSteps: 1, Seed: 2, Size: 4x2", &[]).expect("save");
        assert_ne!(a, b);
        assert_eq!(std::fs::read(&a).expect("read"), before, "the first image is untouched");
        let (back, params) = decode_png(&b).expect("decode");
        assert_eq!(back, img);
        assert_eq!(params.as_deref(), Some("b\nSteps: 1, Seed: 2, Size: 4x2"));
        assert_eq!(newest_pngs(&dir, 10).len(), 2);
        // An image made from a picture keeps it beside itself; the history lists the image only.
        let c = save(&dir, &img, "c\nSteps: 1, Seed: 3, Size: 4x2", &[("init", &img)]).expect("save");
        assert_eq!(decode_png(&latent_engine::image_io::sidecar(&c, "init")).expect("kept").0, img);
        assert_eq!(newest_pngs(&dir, 10).len(), 3);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn thumbnails_keep_aspect_and_average() {
        let img = ImageRgb8 {
            width: 4,
            height: 2,
            pixels: [[0u8, 0, 0], [255, 255, 255]].iter().cycle().take(8).flatten().copied().collect(),
        };
        let t = thumbnail(&img, 2);
        assert_eq!((t.width, t.height), (2, 1));
        assert!(t.pixels.iter().all(|v| (126..=128).contains(v)), "{:?}", t.pixels);
        let same = thumbnail(&img, 100);
        assert_eq!(same, img);
    }
}

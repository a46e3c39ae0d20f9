//! Textual-inversion embeddings: `.safetensors` files of A1111 (`emb_params`,
//! `string_to_param.*`), SDXL (`clip_l` + `clip_g`) and diffusers (one tensor named after its
//! token). Pickle (`.pt`, `.bin`) embeddings are never read.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::SafetensorsFile;
use crate::error::{EngineError, Result};

/// One embedding file, read.
#[derive(Debug, Clone)]
pub struct Embedding {
    /// The file's stem: the word that calls it in a prompt.
    pub name: String,
    pub path: PathBuf,
    /// A1111's short hash (first 10 hex digits of the file's SHA-256).
    pub hash: String,
    /// Vectors per text encoder: `[n, width]` for SD 1.x/2.x (`for_encoder` 0), SDXL's
    /// `clip_l` (0) and `clip_g` (1).
    pub vectors: Vec<Tensor>,
}

impl Embedding {
    /// Reads `path`; a file that is not an embedding is a clear error naming it.
    pub fn open(path: &Path) -> Result<Embedding> {
        let bad = |why: String| EngineError::InvalidRequest(format!("{} is not a textual-inversion embedding: {why}", path.display()));
        let file = SafetensorsFile::open(path)?;
        let st = file.parse()?;
        let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
        let pick = |keys: &[&str]| -> Vec<String> {
            keys.iter()
                .filter(|k| names.iter().any(|n| n == *k))
                .map(|k| k.to_string())
                .collect()
        };
        let keys = if !pick(&["clip_l", "clip_g"]).is_empty() {
            let k = pick(&["clip_l", "clip_g"]);
            if k.len() != 2 {
                return Err(bad("an SDXL embedding needs both clip_l and clip_g".into()));
            }
            k
        } else if !pick(&["emb_params"]).is_empty() {
            pick(&["emb_params"])
        } else if let Some(k) = names.iter().find(|n| n.starts_with("string_to_param.")) {
            vec![k.clone()]
        } else if names.len() == 1 {
            names.clone()
        } else {
            let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
            return Err(bad(format!(
                "{} tensors ({}{})",
                names.len(),
                shown.join(", "),
                if names.len() > 4 { ", ..." } else { "" }
            )));
        };
        let mut vectors = vec![];
        for k in &keys {
            let view = st.tensor(k).map_err(|e| bad(e.to_string()))?;
            let t = super::load_view(&view, super::convert::Transform::None, DType::F32, &Device::Cpu)?
                .ok_or_else(|| bad(format!("tensor {k} is not floating point")))?;
            let t = match t.rank() {
                1 => t.unsqueeze(0)?,
                2 => t,
                3 if t.dim(0)? == 1 => t.squeeze(0)?,
                _ => return Err(bad(format!("tensor {k} has shape {:?}", t.dims()))),
            };
            if t.dim(0)? == 0 || t.dim(0)? > 75 {
                return Err(bad(format!("{} vectors (1 to 75 fit a window)", t.dim(0)?)));
            }
            vectors.push(t);
        }
        if vectors.len() == 2 && vectors[0].dim(0)? != vectors[1].dim(0)? {
            return Err(bad("clip_l and clip_g have different vector counts".into()));
        }
        Ok(Embedding {
            name: path.file_stem().and_then(|s| s.to_str()).unwrap_or("embedding").to_string(),
            path: path.to_path_buf(),
            hash: super::short_hash(path).unwrap_or_default(),
            vectors,
        })
    }

    /// Prompt positions it takes.
    pub fn len(&self) -> usize {
        self.vectors.first().and_then(|t| t.dim(0).ok()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Its vectors for text encoder `i` of `count` whose width is `width`.
    pub fn for_encoder(&self, i: usize, count: usize, width: usize) -> Result<&Tensor> {
        let t = match (count, self.vectors.len()) {
            (1, 1) | (2, 2) => &self.vectors[i],
            (2, 1) => {
                return Err(EngineError::InvalidRequest(format!(
                    "embedding {} has one set of vectors: an SDXL model needs clip_l and clip_g ones",
                    self.path.display()
                )));
            }
            _ => {
                return Err(EngineError::InvalidRequest(format!(
                    "embedding {} is an SDXL embedding (clip_l and clip_g): this model has one text encoder",
                    self.path.display()
                )));
            }
        };
        let have = t.dim(1)?;
        if have != width {
            return Err(EngineError::InvalidRequest(format!(
                "embedding {} has vectors of width {have}, this model's text encoder takes {width}: it was made for another model family",
                self.path.display()
            )));
        }
        Ok(t)
    }
}

/// `.safetensors` files in `dirs` and their subfolders (two levels): `(stem, path)`, the first
/// of a stem winning. `.pt`/`.bin` files are listed apart: they are pickle and never read.
pub fn scan(dirs: &[PathBuf]) -> (Vec<(String, PathBuf)>, Vec<PathBuf>) {
    fn walk(dir: &Path, depth: usize, found: &mut Vec<(String, PathBuf)>, pickles: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        let mut entries: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for p in entries {
            if p.is_dir() {
                if depth > 0 {
                    walk(&p, depth - 1, found, pickles);
                }
                continue;
            }
            let ext = p.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            let Some(stem) = p.file_stem().and_then(|s| s.to_str()).map(str::to_string) else {
                continue;
            };
            match ext.as_deref() {
                Some("safetensors") if !found.iter().any(|(s, _)| s.eq_ignore_ascii_case(&stem)) => found.push((stem, p)),
                Some("pt" | "bin") => pickles.push(p),
                _ => {}
            }
        }
    }
    let (mut found, mut pickles) = (vec![], vec![]);
    for d in dirs {
        walk(d, 2, &mut found, &mut pickles);
    }
    (found, pickles)
}

//! A checkpoint's tensors under the engine's canonical names, plus what the files said about
//! themselves. The networks read only this; [`crate::checkpoint`] fills it from files, the
//! trainer and the benchmarks' random presets fill it in memory.

use std::collections::{BTreeSet, HashMap};

use candle_core::Tensor;

use crate::error::{EngineError, Result};

/// Which text-encoder naming a single-file checkpoint uses for a component.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextFlavor {
    /// OpenAI CLIP in Hugging Face naming (SD 1.x, SDXL's first encoder): quick-GELU.
    OpenAi,
    /// OpenCLIP's own naming (SD 2.x, SDXL's second encoder): exact GELU.
    OpenClip,
}

/// How the weights were laid out on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    SingleFile,
    Diffusers,
}

/// All tensors of a checkpoint under canonical names, plus what the files say about themselves.
/// Cloning is cheap: tensors share their storage.
#[derive(Clone, Debug)]
pub struct Weights {
    pub tensors: HashMap<String, Tensor>,
    /// Shape of every canonical tensor (also filled when only shapes were read).
    pub shapes: HashMap<String, Vec<usize>>,
    /// `__metadata__` entries of the file(s).
    pub metadata: HashMap<String, String>,
    /// diffusers `config.json` of each component (`unet`, `vae`, `text_encoder`, ...).
    pub configs: HashMap<String, serde_json::Value>,
    /// Keys that matched no known layout (shown by `info`; never silently used).
    pub unrecognised: Vec<String>,
    pub layout: Layout,
    /// Naming flavour of `te1` / `te2` where the layout says it.
    pub text_flavors: [Option<TextFlavor>; 2],
    /// Storage dtype(s) found in the files, e.g. "f16".
    pub stored_dtypes: BTreeSet<String>,
    /// Total bytes of tensor data read.
    pub bytes: u64,
}

impl Weights {
    /// The tensor called `name`, or a clear error.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors.get(name).ok_or_else(|| EngineError::MissingTensor(name.to_string()))
    }
    /// True when a tensor of that name exists.
    pub fn has(&self, name: &str) -> bool {
        self.shapes.contains_key(name)
    }
    /// The shape of `name`, or a clear error.
    pub fn shape(&self, name: &str) -> Result<&[usize]> {
        self.shapes
            .get(name)
            .map(Vec::as_slice)
            .ok_or_else(|| EngineError::MissingTensor(name.to_string()))
    }
    /// Names starting with `prefix`.
    pub fn names_with_prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.shapes.keys().filter(move |k| k.starts_with(prefix)).map(String::as_str)
    }
    /// Parameter count of the tensors whose names start with `prefix`.
    pub fn parameters(&self, prefix: &str) -> usize {
        self.shapes
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }
}

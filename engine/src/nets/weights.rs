//! A checkpoint's tensors under the engine's canonical names, plus what the files said about
//! themselves. The networks read only this; [`crate::checkpoint`] fills it from files, the
//! trainer and the benchmarks' random presets fill it in memory.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::{DType, Tensor};

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

/// A weight kept in a GGUF file's quantized blocks (q8_0, q4_K, ...): what the layers hold
/// instead of a dense tensor, dequantized to `dtype` for one product at a time.
#[derive(Clone, Debug)]
pub struct QuantWeight {
    /// The blocks, on the device the model runs on.
    pub q: Arc<QTensor>,
    /// The canonical (logical) shape; the blocks keep the file's row-major order, so only
    /// reshapes (`ConvToLinear`) are allowed between them.
    pub shape: Vec<usize>,
    /// The dtype the dense weight computes in.
    pub dtype: DType,
}

impl QuantWeight {
    /// The dense weight: dequantized to f32, reshaped, converted to `dtype` on the blocks'
    /// device. The same arithmetic as dequantizing at load, so the values are identical.
    pub fn dequantize(&self) -> candle_core::Result<Tensor> {
        crate::kernels::dequant::dequantize(&self.q)?
            .reshape(self.shape.as_slice())?
            .to_dtype(self.dtype)?
            .contiguous()
    }
    /// Bytes the blocks take in memory.
    pub fn bytes(&self) -> usize {
        self.q.storage_size_in_bytes()
    }
}

/// All tensors of a checkpoint under canonical names, plus what the files say about themselves.
/// Cloning is cheap: tensors share their storage.
#[derive(Clone, Debug)]
pub struct Weights {
    pub tensors: HashMap<String, Tensor>,
    /// Weights kept quantized (GGUF q-types): never also in `tensors`; [`Weights::get`]
    /// dequantizes them on request, the layers hold them as they are.
    pub quantized: HashMap<String, QuantWeight>,
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
    /// The tensor called `name` (dequantized when it is kept quantized), or a clear error.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        if let Some(t) = self.tensors.get(name) {
            return Ok(t.clone());
        }
        match self.quantized.get(name) {
            Some(q) => Ok(q.dequantize()?),
            None => Err(EngineError::MissingTensor(name.to_string())),
        }
    }
    /// The weight `name` as a layer holds it: dense, or still quantized.
    pub fn param(&self, name: &str) -> Result<Param> {
        if let Some(t) = self.tensors.get(name) {
            return Ok(Param::Dense(t.clone()));
        }
        match self.quantized.get(name) {
            Some(q) => Ok(Param::Quant(Box::new(q.clone()))),
            None => Err(EngineError::MissingTensor(name.to_string())),
        }
    }
    /// The device the weights live on (the CPU for an empty set).
    pub fn device(&self) -> candle_core::Device {
        match (self.tensors.values().next(), self.quantized.values().next()) {
            (Some(t), _) => t.device().clone(),
            (None, Some(q)) => q.q.device(),
            (None, None) => candle_core::Device::Cpu,
        }
    }
    /// Bytes the weights take in memory (dense tensors plus quantized blocks).
    pub fn resident_bytes(&self) -> u64 {
        let dense: usize = self.tensors.values().map(|t| t.elem_count() * t.dtype().size_in_bytes()).sum();
        let quant: usize = self.quantized.values().map(QuantWeight::bytes).sum();
        (dense + quant) as u64
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

/// A layer's weight: a dense tensor, or quantized blocks dequantized for each product (the
/// dense copy lives only while the layer runs).
#[derive(Clone, Debug)]
pub enum Param {
    Dense(Tensor),
    /// Boxed: layers stay small next to their dense twins.
    Quant(Box<QuantWeight>),
}

impl Param {
    /// The dense weight (a cheap clone, or a fresh dequantized tensor).
    pub fn tensor(&self) -> candle_core::Result<Tensor> {
        match self {
            Param::Dense(t) => Ok(t.clone()),
            Param::Quant(q) => q.dequantize(),
        }
    }
    pub fn dims(&self) -> &[usize] {
        match self {
            Param::Dense(t) => t.dims(),
            Param::Quant(q) => &q.shape,
        }
    }
    pub fn dtype(&self) -> DType {
        match self {
            Param::Dense(t) => t.dtype(),
            Param::Quant(q) => q.dtype,
        }
    }
    /// Whether gradients flow into it (quantized blocks are frozen).
    pub fn track_op(&self) -> bool {
        matches!(self, Param::Dense(t) if t.track_op())
    }
    /// The same weight under another logical shape (a reshape of the dense tensor, or of the
    /// quantized weight's declared shape).
    pub fn reshaped(self, shape: &[usize]) -> candle_core::Result<Param> {
        Ok(match self {
            Param::Dense(t) => Param::Dense(t.reshape(shape)?),
            Param::Quant(mut q) => {
                if shape.iter().product::<usize>() != q.shape.iter().product::<usize>() {
                    candle_core::bail!("cannot reshape a quantized weight of shape {:?} to {shape:?}", q.shape)
                }
                q.shape = shape.to_vec();
                Param::Quant(q)
            }
        })
    }
}

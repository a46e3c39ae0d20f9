//! Trainable parameters: one candle `Var` per canonical tensor, viewed as [`Weights`] so the
//! engine's own networks (the ones that generate) are the ones trained.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var};

use crate::error::{EngineError, Result};
use crate::nets::weights::{Layout, Weights};
use crate::rng::TorchRng;

/// Named trainable tensors, in a fixed order.
pub struct Params {
    pub vars: Vec<(String, Var)>,
}

impl Params {
    /// Fresh parameters for `shapes`: weights ~ N(0, 1/fan_in), norm scales 1, biases 0;
    /// deterministic from `seed`.
    pub fn init(shapes: &[(String, Vec<usize>)], seed: u64, device: &Device) -> Result<Self> {
        let mut rng = TorchRng::new(seed);
        let mut vars = vec![];
        for (name, shape) in shapes {
            let n: usize = shape.iter().product();
            let t = if shape.len() == 1 {
                let norm_scale = name.ends_with(".weight");
                Tensor::full(if norm_scale { 1f32 } else { 0f32 }, shape.clone(), device)?
            } else {
                let fan_in: usize = shape[1..].iter().product::<usize>().max(1);
                let std = (1.0 / fan_in as f32).sqrt();
                let v: Vec<f32> = rng.randn_f32(n).into_iter().map(|x| x * std).collect();
                Tensor::from_vec(v, shape.clone(), device)?
            };
            vars.push((name.clone(), Var::from_tensor(&t)?));
        }
        Ok(Self { vars })
    }

    /// The parameters as weights the networks are built from (sharing the variables, so the
    /// networks' outputs carry gradients back to them).
    pub fn weights(&self) -> Weights {
        let tensors: HashMap<String, Tensor> = self.vars.iter().map(|(n, v)| (n.clone(), v.as_tensor().clone())).collect();
        let shapes = tensors.iter().map(|(n, t)| (n.clone(), t.dims().to_vec())).collect();
        Weights {
            tensors,
            quantized: Default::default(),
            shapes,
            metadata: HashMap::new(),
            configs: HashMap::new(),
            unrecognised: vec![],
            layout: Layout::Diffusers,
            text_flavors: [None, None],
            stored_dtypes: BTreeSet::from(["f32".to_string()]),
            bytes: 0,
        }
    }

    /// The parameters' current values, detached: networks built from them run the fast
    /// inference kernels and record no graph (a frozen part, or evaluation).
    pub fn frozen_weights(&self) -> Weights {
        let mut w = self.weights();
        for t in w.tensors.values_mut() {
            *t = t.detach();
        }
        w
    }

    /// The variables whose names start with one of `prefixes` (what an optimiser updates).
    pub fn select(&self, prefixes: &[&str]) -> Vec<Var> {
        self.vars
            .iter()
            .filter(|(n, _)| prefixes.iter().any(|p| n.starts_with(p)))
            .map(|(_, v)| v.clone())
            .collect()
    }

    /// Number of scalars under `prefix`.
    pub fn count(&self, prefix: &str) -> usize {
        self.vars
            .iter()
            .filter(|(n, _)| n.starts_with(prefix))
            .map(|(_, v)| v.as_tensor().elem_count())
            .sum()
    }

    /// Writes every parameter in `dtype` (f32 for checkpoints, f16 for the shipped model)
    /// with `metadata` to a safetensors file, through a temporary file renamed into place
    /// (a checkpoint is never left half-written).
    pub fn save_as(&self, path: &Path, dtype: DType, metadata: HashMap<String, String>) -> Result<()> {
        let (st_dtype, size) = match dtype {
            DType::F16 => (safetensors::Dtype::F16, 2),
            _ => (safetensors::Dtype::F32, 4),
        };
        let mut data: Vec<(String, Vec<usize>, Vec<u8>)> = vec![];
        for (n, v) in &self.vars {
            let t = v.as_tensor().detach().to_dtype(if size == 2 { DType::F16 } else { DType::F32 })?;
            let bytes: Vec<u8> = if size == 2 {
                t.flatten_all()?
                    .to_vec1::<half::f16>()?
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect()
            } else {
                t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|x| x.to_le_bytes()).collect()
            };
            data.push((n.clone(), t.dims().to_vec(), bytes));
        }
        let views = data
            .iter()
            .map(|(n, shape, bytes)| {
                safetensors::tensor::TensorView::new(st_dtype, shape.clone(), bytes)
                    .map(|v| (n.clone(), v))
                    .map_err(|e| EngineError::Other(format!("{n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| EngineError::Other(format!("saving: {e}")))?;
        let tmp = path.with_extension("partial");
        std::fs::write(&tmp, bytes).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, path).map_err(|e| io(path, e))
    }

    /// A training checkpoint (f32).
    pub fn save(&self, path: &Path, metadata: HashMap<String, String>) -> Result<()> {
        self.save_as(path, DType::F32, metadata)
    }

    /// Loads values saved by [`Params::save`] (training resumes where it stopped). Every
    /// parameter must be present with its shape.
    pub fn load(&self, path: &Path) -> Result<HashMap<String, String>> {
        self.load_prefix(path, "")
    }

    /// [`Params::load`] for the parameters whose names start with `prefix` only (the others
    /// keep their values): e.g. `vae.` takes a trained autoencoder from an exported model
    /// (f16 or f32), which has the same names.
    pub fn load_prefix(&self, path: &Path, prefix: &str) -> Result<HashMap<String, String>> {
        let data = std::fs::read(path).map_err(|e| io(path, e))?;
        let st = safetensors::SafeTensors::deserialize(&data).map_err(|e| EngineError::BadSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        for (name, var) in self.vars.iter().filter(|(n, _)| n.starts_with(prefix)) {
            let view = st
                .tensor(name)
                .map_err(|_| EngineError::MissingTensor(format!("{name} in {}", path.display())))?;
            if view.shape() != var.as_tensor().dims() {
                return Err(EngineError::ShapeMismatch {
                    name: name.clone(),
                    found: view.shape().to_vec(),
                    expected: var.as_tensor().dims().to_vec(),
                });
            }
            let t = candle_core::safetensors::Load::load(&view, var.device())?.to_dtype(DType::F32)?;
            var.set(&t)?;
        }
        let (_, meta) = safetensors::SafeTensors::read_metadata(&data).map_err(|e| EngineError::BadSafetensors {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }
}

fn io(path: &Path, source: std::io::Error) -> EngineError {
    EngineError::Io {
        path: path.to_path_buf(),
        source,
    }
}

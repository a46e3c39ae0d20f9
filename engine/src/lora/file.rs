//! Reading a LoRA file: tensors grouped by module, the format, rank/alpha, trigger words.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use super::keys::{self, Part};
use crate::checkpoint::SafetensorsFile;
use crate::error::{EngineError, Result};

/// The LoRA flavours the engine merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LoraFormat {
    /// Low-rank `up @ down` (kohya LoRA, LoCon convolutions, PEFT `lora_A/B`).
    LoRa,
    /// Hadamard product of two low-rank products (LyCORIS LoHa).
    LoHa,
    /// Kronecker product (LyCORIS LoKr).
    LoKr,
}

impl LoraFormat {
    /// Display name.
    pub fn name(self) -> &'static str {
        match self {
            LoraFormat::LoRa => "LoRA",
            LoraFormat::LoHa => "LoHa",
            LoraFormat::LoKr => "LoKr",
        }
    }
}

/// One module's tensors.
#[derive(Clone, Debug)]
pub struct Module {
    pub key: String,
    pub parts: HashMap<Part, Tensor>,
}

impl Module {
    /// Its format, from the tensors present.
    pub fn format(&self) -> Option<LoraFormat> {
        let has = |p| self.parts.contains_key(&p);
        if has(Part::HadaW1A) {
            Some(LoraFormat::LoHa)
        } else if has(Part::LokrW1) || has(Part::LokrW1A) {
            Some(LoraFormat::LoKr)
        } else if has(Part::Down) && has(Part::Up) {
            Some(LoraFormat::LoRa)
        } else {
            None
        }
    }
    /// Rank of the decomposition, when it has one.
    pub fn rank(&self) -> Option<usize> {
        let dim0 = |p| self.parts.get(&p).and_then(|t: &Tensor| t.dims().first().copied());
        match self.format()? {
            LoraFormat::LoRa => dim0(Part::Down),
            LoraFormat::LoHa => dim0(Part::HadaW1B),
            LoraFormat::LoKr => dim0(Part::LokrW2B).or_else(|| dim0(Part::LokrW1B)),
        }
    }
    /// The `.alpha` scalar, when stored.
    pub fn alpha(&self) -> Option<f32> {
        self.parts.get(&Part::Alpha).and_then(|t| {
            t.flatten_all()
                .ok()?
                .to_dtype(DType::F32)
                .ok()?
                .to_vec1::<f32>()
                .ok()?
                .first()
                .copied()
        })
    }
    /// Which part of the model the module belongs to ("unet", "te1", "te2", or "?").
    pub fn component(&self) -> &'static str {
        let k = keys::normalise(&self.key);
        if k.starts_with("unet.") || k.starts_with("lora_unet_") {
            "unet"
        } else if k.starts_with("te2.") || k.starts_with("lora_te2_") {
            "te2"
        } else if k.starts_with("te1.") || k.starts_with("lora_te_") || k.starts_with("lora_te1_") {
            "te1"
        } else {
            "?"
        }
    }
}

/// A parsed LoRA file, kept in memory (LoRA files are small) so strengths can change freely.
#[derive(Clone, Debug)]
pub struct LoraFile {
    pub path: PathBuf,
    pub name: String,
    pub modules: BTreeMap<String, Module>,
    /// Tensor names that are not part of any LoRA module (reported, never used).
    pub stray: Vec<String>,
    pub metadata: HashMap<String, String>,
    /// PEFT's `lora_alpha` from the file's metadata (diffusers writes it as JSON).
    pub peft_alpha: Option<f32>,
    pub tensors: usize,
    /// A1111's short hash (first 10 hex digits of the file's SHA-256), for `Lora hashes`.
    pub hash: String,
}

impl LoraFile {
    /// Reads and groups a LoRA file (f32 on the CPU).
    pub fn open(path: &Path) -> Result<Self> {
        let file = SafetensorsFile::open(path)?;
        let metadata = file.metadata()?;
        let st = file.parse()?;
        let mut modules: BTreeMap<String, Module> = BTreeMap::new();
        let mut stray = vec![];
        let mut tensors = 0;
        for (name, _) in st.iter() {
            tensors += 1;
            match keys::split(name) {
                Some((module, part)) => {
                    let Some(t) = file.load(name, crate::checkpoint::convert::Transform::None, DType::F32, &Device::Cpu)? else {
                        stray.push(name.to_string());
                        continue;
                    };
                    modules
                        .entry(module.clone())
                        .or_insert_with(|| Module {
                            key: module,
                            parts: HashMap::new(),
                        })
                        .parts
                        .insert(part, t);
                }
                None => stray.push(name.to_string()),
            }
        }
        if modules.is_empty() {
            return Err(EngineError::Other(format!(
                "{} holds no LoRA tensors (is it a full checkpoint? open it as a model instead)",
                path.display()
            )));
        }
        let peft_alpha = metadata
            .get("lora_adapter_metadata")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
            .and_then(|v| {
                v.get("lora_alpha")
                    .or_else(|| v.get("unet.lora_alpha"))
                    .and_then(|a| a.as_f64())
                    .map(|a| a as f32)
            });
        stray.sort();
        let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("lora").to_string();
        let hash = {
            use sha2::Digest;
            let bytes = std::fs::read(path).map_err(|source| EngineError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            sha2::Sha256::digest(&bytes).iter().take(5).map(|b| format!("{b:02x}")).collect()
        };
        Ok(Self {
            path: path.to_path_buf(),
            name,
            modules,
            stray,
            metadata,
            peft_alpha,
            tensors,
            hash,
        })
    }

    /// Formats present, with module counts.
    pub fn formats(&self) -> BTreeMap<LoraFormat, usize> {
        let mut m = BTreeMap::new();
        for module in self.modules.values() {
            if let Some(f) = module.format() {
                *m.entry(f).or_insert(0) += 1;
            }
        }
        m
    }

    /// The family the file was made for, guessed from its names and cross-attention widths.
    pub fn target_family(&self) -> &'static str {
        if self.modules.values().any(|m| m.component() == "te2") {
            return "SDXL";
        }
        let context = self
            .modules
            .iter()
            .find(|(k, _)| k.contains("attn2") && (k.ends_with("to_k") || k.ends_with("to_v")))
            .and_then(|(_, m)| {
                m.parts
                    .get(&Part::Down)
                    .or_else(|| m.parts.get(&Part::HadaW1B))
                    .map(|t| t.dims().get(1).copied().unwrap_or(0))
            });
        match context {
            Some(768) => "SD 1.x",
            Some(1024) => "SD 2.x",
            Some(2048) => "SDXL",
            _ => "unknown (no full-size cross-attention layer to tell by)",
        }
    }

    /// Most frequent training tags (kohya `ss_tag_frequency`), the usual trigger words.
    pub fn trigger_words(&self, n: usize) -> Vec<(String, u64)> {
        let Some(v) = self
            .metadata
            .get("ss_tag_frequency")
            .and_then(|s| serde_json::from_str::<serde_json::Value>(s).ok())
        else {
            return vec![];
        };
        let mut counts: HashMap<String, u64> = HashMap::new();
        if let Some(sets) = v.as_object() {
            for set in sets.values() {
                if let Some(tags) = set.as_object() {
                    for (tag, c) in tags {
                        *counts.entry(tag.trim().to_string()).or_insert(0) += c.as_u64().unwrap_or(0);
                    }
                }
            }
        }
        let mut list: Vec<(String, u64)> = counts.into_iter().collect();
        list.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        list.truncate(n);
        list
    }
}

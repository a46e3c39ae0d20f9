//! GGUF checkpoints: stable-diffusion.cpp's whole-model files (LDM tensor names:
//! `model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*`) and ComfyUI-GGUF's
//! UNet-only files (the UNet's names without the `model.diffusion_model.` prefix). Every
//! GGML type candle knows (f32, f16, bf16, q4_0/1, q5_0/1, q8_0, q2_K..q8_K) is read; the
//! quantized ones stay in their blocks in memory and each layer dequantizes its weight for
//! its own product (the same values as dequantizing at load, at a fraction of the memory),
//! so the networks, LoRA merges and solvers are the ones of any checkpoint; the stored types
//! and their share are kept for `info`, the window and the metadata.
//! Also writes them (`quantize`): [`quantize_file`].

use std::collections::BTreeMap;
use std::io::{Seek, Write};
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{DType, Device, Tensor};

use super::{Read, Transform, decoder_ups, empty, rename_single_file, transformed, transformed_shape};
use crate::error::{EngineError, Result};
use crate::nets::weights::{Layout, QuantWeight, Weights};

/// Whether `path` starts with GGUF's magic.
pub fn is_gguf(path: &Path) -> bool {
    use std::io::Read as _;
    let mut magic = [0u8; 4];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && &magic == b"GGUF"
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    // candle's messages carry a backtrace when RUST_BACKTRACE is set: the first line only.
    let reason = reason.to_string();
    EngineError::BadGguf {
        path: path.to_path_buf(),
        reason: reason.lines().next().unwrap_or_default().to_string(),
    }
}

/// The lower-case name stable-diffusion.cpp and the `gguf` package use for a type.
pub fn type_name(t: GgmlDType) -> &'static str {
    match t {
        GgmlDType::F32 => "f32",
        GgmlDType::F16 => "f16",
        GgmlDType::BF16 => "bf16",
        GgmlDType::Q4_0 => "q4_0",
        GgmlDType::Q4_1 => "q4_1",
        GgmlDType::Q5_0 => "q5_0",
        GgmlDType::Q5_1 => "q5_1",
        GgmlDType::Q8_0 => "q8_0",
        GgmlDType::Q8_1 => "q8_1",
        GgmlDType::Q2K => "q2_K",
        GgmlDType::Q3K => "q3_K",
        GgmlDType::Q4K => "q4_K",
        GgmlDType::Q5K => "q5_K",
        GgmlDType::Q6K => "q6_K",
        GgmlDType::Q8K => "q8_K",
    }
}

/// The type named `name` (`q8_0`, `Q4_K`, `f16`, ...).
pub fn parse_type(name: &str) -> Option<GgmlDType> {
    let all = [
        GgmlDType::F32,
        GgmlDType::F16,
        GgmlDType::BF16,
        GgmlDType::Q4_0,
        GgmlDType::Q4_1,
        GgmlDType::Q5_0,
        GgmlDType::Q5_1,
        GgmlDType::Q8_0,
        GgmlDType::Q2K,
        GgmlDType::Q3K,
        GgmlDType::Q4K,
        GgmlDType::Q5K,
        GgmlDType::Q6K,
    ];
    all.into_iter().find(|t| type_name(*t).eq_ignore_ascii_case(name.trim()))
}

fn stored_bytes(info: &gguf_file::TensorInfo) -> u64 {
    let t = info.ggml_dtype;
    (info.shape.elem_count() / t.block_size() * t.type_size()) as u64
}

/// Opens and parses a GGUF file's header.
fn open(path: &Path) -> Result<(std::fs::File, gguf_file::Content)> {
    let mut f = std::fs::File::open(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| bad(path, e))?;
    let len = f.seek(std::io::SeekFrom::End(0)).map_err(|e| bad(path, e))?;
    for (name, info) in &content.tensor_infos {
        let end = content.tensor_data_offset + info.offset + stored_bytes(info);
        if end > len {
            return Err(bad(
                path,
                format!("tensor {name} ends at byte {end}, past the end of the file ({len} bytes): the file is truncated"),
            ));
        }
    }
    Ok((f, content))
}

/// The metadata key where ComfyUI-GGUF's converter records a tensor's shape before it
/// flattened it to rows of 256 for the k-quants (SD 1.x and SDXL convolutions).
pub const ORIG_SHAPE_KEY: &str = "comfy.gguf.orig_shape.";

/// The shape `name` has in the model: ComfyUI-GGUF's recorded original shape when there is
/// one (checked against the stored element count), else the stored shape.
fn model_shape(path: &Path, content: &gguf_file::Content, name: &str, info: &gguf_file::TensorInfo) -> Result<Vec<usize>> {
    let Some(v) = content.metadata.get(&format!("{ORIG_SHAPE_KEY}{name}")) else {
        return Ok(info.shape.dims().to_vec());
    };
    let dims: Option<Vec<usize>> = v.to_vec().ok().and_then(|items| {
        items
            .iter()
            .map(|d| {
                let n = d
                    .to_i32()
                    .map(i64::from)
                    .or_else(|_| d.to_i64())
                    .or_else(|_| d.to_u64().map(|u| u as i64))
                    .ok()?;
                usize::try_from(n).ok()
            })
            .collect()
    });
    match dims {
        Some(d) if d.iter().product::<usize>() == info.shape.elem_count() => Ok(d),
        _ => Err(bad(
            path,
            format!(
                "{ORIG_SHAPE_KEY}{name} is not a shape of {} values (the tensor's {:?})",
                info.shape.elem_count(),
                info.shape.dims()
            ),
        )),
    }
}

/// "q8_0 73%, f16 27%" (by parameters, quantized types first): what the window, `info` and
/// the images' metadata show.
fn shares(by_type: BTreeMap<&'static str, u64>) -> String {
    let total: u64 = by_type.values().sum::<u64>().max(1);
    let mut shares: Vec<(&str, u64)> = by_type.into_iter().collect();
    let float = |k: &str| matches!(k, "f32" | "f16" | "bf16");
    shares.sort_by(|a, b| float(a.0).cmp(&float(b.0)).then(b.1.cmp(&a.1)));
    let parts: Vec<String> = shares
        .iter()
        .map(|(k, n)| format!("{k} {}%", (n * 100 + total / 2) / total))
        .collect();
    parts.join(", ")
}

/// What the model picker says of a GGUF file before it is opened, from its header alone:
/// the weight types by share of parameters, and "UNet only" for ComfyUI-GGUF's kind (which
/// opens with a components checkpoint), e.g. "q8_0 94%, f32 6%; UNet only".
pub fn describe(path: &Path) -> Result<String> {
    let (_, content) = open(path)?;
    let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    for info in content.tensor_infos.values() {
        *by_type.entry(type_name(info.ggml_dtype)).or_default() += info.shape.elem_count() as u64;
    }
    let names: Vec<String> = content.tensor_infos.keys().cloned().collect();
    let unet_only = if super::unet_only_prefix(&names).is_empty() {
        ""
    } else {
        "; UNet only"
    };
    Ok(format!("{}{unet_only}", shares(by_type)))
}

/// Loads a GGUF checkpoint into canonical names. Quantized tensors (q8_0, q4_K, ...) stay
/// in their blocks on `device` when `keep_quantized` and their renaming is at most a reshape
/// ([`Weights::quantized`]; the layers dequantize them per product); the rest, and all of
/// them otherwise, are dequantized to `dtype` as they are read.
pub fn load(path: &Path, dtype: DType, device: &Device, read: Read, keep_quantized: bool) -> Result<Weights> {
    let (mut f, content) = open(path)?;
    let mut source: Vec<String> = content.tensor_infos.keys().cloned().collect();
    source.sort();
    let prefix = super::unet_only_prefix(&source);
    let names: Vec<String> = source.iter().map(|n| format!("{prefix}{n}")).collect();
    let mut w = empty(Layout::SingleFile);
    for (k, v) in &content.metadata {
        if let Ok(s) = v.to_string() {
            w.metadata.insert(k.clone(), s.clone());
        }
    }
    let renamed = rename_single_file(&names, &mut w);
    let num_up = decoder_ups(&renamed);
    let mut by_type: BTreeMap<&'static str, u64> = BTreeMap::new();
    for (src, r) in renamed {
        let file_name = &src[prefix.len()..];
        let Some(info) = content.tensor_infos.get(file_name) else {
            continue;
        };
        let kind = type_name(info.ggml_dtype);
        w.stored_dtypes.insert(kind.to_string());
        *by_type.entry(kind).or_default() += info.shape.elem_count() as u64;
        w.bytes += stored_bytes(info);
        let name = super::convert::resolve_decoder_index(&r.name, num_up);
        if !read.covers(&name) {
            continue;
        }
        let shape = model_shape(path, &content, file_name, info)?;
        w.shapes.insert(name.clone(), transformed_shape(&shape, r.transform));
        if read.data() {
            let reshape_only = matches!(r.transform, Transform::None | Transform::ConvToLinear);
            let float = matches!(info.ggml_dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16);
            if keep_quantized && reshape_only && !float {
                let q = info
                    .read(&mut f, content.tensor_data_offset, device)
                    .map_err(|e| bad(path, format!("tensor {file_name}: {e}")))?;
                let shape = w.shapes[&name].clone();
                w.quantized.insert(
                    name,
                    QuantWeight {
                        q: Arc::new(q),
                        shape,
                        dtype,
                    },
                );
                continue;
            }
            let q = info
                .read(&mut f, content.tensor_data_offset, &Device::Cpu)
                .map_err(|e| bad(path, format!("tensor {file_name}: {e}")))?;
            let t = q
                .dequantize(&Device::Cpu)
                .and_then(|t| t.reshape(shape.as_slice()))
                .map_err(|e| bad(path, format!("tensor {file_name}: {e}")))?;
            w.tensors.insert(name, transformed(t, r.transform, dtype, device)?);
        }
    }
    if w.shapes.is_empty() && read != Read::Components {
        return Err(EngineError::UnknownArchitecture(format!(
            "{} is a GGUF file without Stable Diffusion tensors (general.architecture: {}; its names start like {:?})",
            path.display(),
            content
                .metadata
                .get("general.architecture")
                .and_then(|v| v.to_string().ok().cloned())
                .unwrap_or_else(|| "not said".into()),
            source.iter().take(3).collect::<Vec<_>>()
        )));
    }
    w.metadata.insert("latent_studio.gguf_types".into(), shares(by_type));
    w.unrecognised.sort();
    Ok(w)
}

/// Whether a tensor stays at higher precision when a checkpoint is quantized, as
/// stable-diffusion.cpp and ComfyUI-GGUF keep them: anything outside the UNet (text encoders,
/// VAE), 1-D tensors (norms, biases), the time and label embeddings, the first and last
/// convolutions, and tensors whose rows are not a whole number of the type's blocks.
pub fn keeps_precision(name: &str, shape: &[usize], t: GgmlDType, keep: &[String]) -> bool {
    let unet = name.starts_with("model.diffusion_model.") || name.starts_with("unet.") || name.starts_with("input_blocks.");
    let sensitive = [
        "norm",
        "time_embed",
        "label_emb",
        "time_embedding",
        "add_embedding",
        "conv_in",
        "conv_out",
        "input_blocks.0.0.",
        ".out.2.",
    ];
    !unet
        || shape.len() < 2
        || sensitive.iter().any(|s| name.contains(s))
        || keep.iter().any(|k| !k.is_empty() && name.contains(k.as_str()))
        || shape.last().is_none_or(|d| d % t.block_size() != 0)
}

/// What [`quantize_file`] did.
#[derive(Debug, Clone, Default)]
pub struct QuantizeReport {
    pub tensors: usize,
    pub quantized: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// The names are the original (LDM) checkpoint's (`model.diffusion_model.*`), which
    /// stable-diffusion.cpp needs; false for diffusers-style names (`unet.*`, as `bench
    /// random-model` writes), which only the studio and diffusers-aware readers take.
    pub ldm_names: bool,
}

/// How [`quantize_file`] lays out convolution kernels.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ConvLayout {
    /// As stable-diffusion.cpp: kernels keep their 4-D shape, so a 3x3 or 1x1 kernel (rows of
    /// 3 or 1) is never a whole block and stays f16. Every GGUF reader takes these files.
    #[default]
    Kept,
    /// As ComfyUI-GGUF's converter for SD 1.x and SDXL: a kernel of a multiple of 256 values
    /// whose rows are not whole blocks is stored as rows of 256 and quantized, its shape
    /// recorded under `comfy.gguf.orig_shape.<name>`. The UNet is then quantized nearly whole
    /// (SD 1.5's convolutions are two thirds of it); stable-diffusion.cpp cannot read these.
    Flattened,
}

/// Tensors this small are never flattened (ComfyUI-GGUF's threshold is of this order).
const FLATTEN_MIN: usize = 4096;

/// Writes `input` (a single-file .safetensors checkpoint, tensor names kept as they are) to
/// `output` as GGUF: the UNet's large tensors as `t`, the rest ([`keeps_precision`], plus any
/// tensor whose name contains one of `keep`) as f16 (f32 tensors that are 1-D stay f32);
/// convolution kernels as `convs` says. Never overwrites: `output` must not exist.
pub fn quantize_file(input: &Path, output: &Path, t: GgmlDType, keep: &[String], convs: ConvLayout) -> Result<QuantizeReport> {
    if output.exists() {
        return Err(EngineError::Other(format!(
            "{} exists; quantize never overwrites a file",
            output.display()
        )));
    }
    if input.is_dir() {
        return Err(EngineError::Other(format!(
            "{} is a folder: quantize takes a single-file .safetensors checkpoint",
            input.display()
        )));
    }
    let file = super::SafetensorsFile::open(input)?;
    let st = file.parse()?;
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut report = QuantizeReport {
        ldm_names: names.iter().any(|n| n.starts_with("model.diffusion_model.")),
        ..Default::default()
    };
    let mut tensors: Vec<(String, QTensor)> = vec![];
    let mut meta: Vec<(String, gguf_file::Value)> = vec![];
    for n in &names {
        let view = st.tensor(n).map_err(|e| file.bad(super::describe_st_error(&e)))?;
        report.bytes_in += view.data().len() as u64;
        let Some(x) = super::load_view(&view, super::Transform::None, DType::F32, &Device::Cpu)? else {
            continue;
        };
        let keep_type = if view.dtype() == safetensors::Dtype::F32 && x.rank() < 2 {
            GgmlDType::F32
        } else {
            GgmlDType::F16
        };
        let n_values = x.elem_count();
        let flatten = convs == ConvLayout::Flattened
            && x.rank() > 2
            && n_values >= FLATTEN_MIN
            && n_values.is_multiple_of(256)
            && !x.dims().last().is_some_and(|d| d.is_multiple_of(256));
        let stored = if flatten { x.reshape((n_values / 256, 256))? } else { x.clone() };
        // Whole blocks are judged on the stored shape (a flattened kernel has rows of 256).
        let chosen = if keeps_precision(n, stored.dims(), t, keep) { keep_type } else { t };
        if chosen == t && t != keep_type {
            report.quantized += 1;
        }
        let x = if flatten && chosen == t {
            meta.push((
                format!("{ORIG_SHAPE_KEY}{n}"),
                gguf_file::Value::Array(x.dims().iter().map(|&d| gguf_file::Value::I32(d as i32)).collect()),
            ));
            stored
        } else {
            x
        };
        let q = QTensor::quantize(&x, chosen).map_err(|e| EngineError::Other(format!("{n}: {e}")))?;
        report.bytes_out += q.storage_size_in_bytes() as u64;
        tensors.push((n.clone(), q));
        report.tensors += 1;
    }
    meta.extend(file.metadata()?.into_iter().map(|(k, v)| (k, gguf_file::Value::String(v))));
    meta.push(("general.name".into(), gguf_file::Value::String(stem(input))));
    meta.push(("latent_studio.quantized_type".into(), gguf_file::Value::String(type_name(t).into())));
    meta.sort_by(|a, b| a.0.cmp(&b.0));
    let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.partial-{}", stem(output), std::process::id()));
    let io = |source| EngineError::Io {
        path: output.to_path_buf(),
        source,
    };
    let written = (|| -> Result<()> {
        let mut w = std::io::BufWriter::new(std::fs::File::create(&tmp).map_err(io)?);
        let meta_refs: Vec<(&str, &gguf_file::Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        gguf_file::write(&mut w, &meta_refs, &tensor_refs).map_err(|e| EngineError::Other(format!("writing {}: {e}", output.display())))?;
        w.flush().map_err(io)?;
        // Linking fails if the output appeared meanwhile: nothing is ever replaced.
        std::fs::hard_link(&tmp, output).map_err(io)?;
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    written?;
    Ok(report)
}

fn stem(p: &Path) -> String {
    p.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The tensor `name` of a GGUF file, dequantized to f32 on the CPU, in its model shape
/// (ComfyUI-GGUF's recorded one where there is one; tests, `info`).
pub fn read_tensor(path: &Path, name: &str) -> Result<Tensor> {
    let (mut f, content) = open(path)?;
    let info = content
        .tensor_infos
        .get(name)
        .ok_or_else(|| bad(path, format!("no tensor {name}")))?;
    let shape = model_shape(path, &content, name, info)?;
    let q = content.tensor(&mut f, name, &Device::Cpu).map_err(|e| bad(path, e))?;
    q.dequantize(&Device::Cpu).and_then(|t| t.reshape(shape)).map_err(|e| bad(path, e))
}

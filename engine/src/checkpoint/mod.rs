//! Reading weights from the files users have: LDM single files and diffusers folders, turned
//! into [`Weights`] under canonical names ([`convert`]) with the architecture read off them
//! ([`architecture`]), and GGUF files ([`gguf`]: stable-diffusion.cpp's and ComfyUI-GGUF's,
//! dequantized as they are read). Nothing here builds a network.
//!
//! Files are memory-mapped and validated by the safetensors parser (a truncated file fails on
//! its header, before any tensor is touched). Pickle files are refused by extension and magic
//! bytes: loading them can execute code.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

pub mod architecture;
pub mod convert;
pub mod embedding;
pub mod gguf;

use crate::error::{EngineError, Result};
use crate::nets::weights::{Layout, TextFlavor, Weights};
use convert::{Renamed, Transform};

const PICKLE_EXTENSIONS: &[&str] = &["ckpt", "pt", "pth", "bin", "pkl", "pickle"];

/// Refuses pickle checkpoints before reading them, by extension or by their first bytes.
pub fn refuse_pickle(path: &Path) -> Result<()> {
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    if let Some(ext) = ext.as_deref()
        && PICKLE_EXTENSIONS.contains(&ext)
    {
        return Err(EngineError::PickleRefused {
            path: path.to_path_buf(),
            kind: "by its extension",
        });
    }
    let mut head = [0u8; 9];
    if let Ok(mut f) = std::fs::File::open(path) {
        use std::io::Read;
        let n = f.read(&mut head).unwrap_or(0);
        // A safetensors file: an 8-byte header length, then its JSON header. The length's
        // first bytes can look like a pickle's protocol marker (a header of 0x0380 bytes
        // starts 80 03), so the JSON brace decides.
        if n == 9 && head[8] == b'{' {
            return Ok(());
        }
        if n >= 4 && head[..4] == *b"PK\x03\x04" {
            return Err(EngineError::PickleRefused {
                path: path.to_path_buf(),
                kind: "a zip archive as written by torch.save",
            });
        }
        if n >= 2 && head[0] == 0x80 && (2..=5).contains(&head[1]) {
            return Err(EngineError::PickleRefused {
                path: path.to_path_buf(),
                kind: "a raw pickle stream",
            });
        }
    }
    Ok(())
}

/// One memory-mapped safetensors file.
pub struct SafetensorsFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
}

impl SafetensorsFile {
    /// Maps `path` after checking it is not pickle.
    pub fn open(path: &Path) -> Result<Self> {
        refuse_pickle(path)?;
        let file = std::fs::File::open(path).map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        // SAFETY: the map is read-only; a file modified by another process while mapped can
        // change the bytes under us, which at worst yields wrong weights, as any reader would.
        #[allow(unsafe_code)]
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| EngineError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let me = Self {
            path: path.to_path_buf(),
            mmap,
        };
        me.parse()?;
        Ok(me)
    }

    fn bad(&self, reason: impl Into<String>) -> EngineError {
        EngineError::BadSafetensors {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// Parses (and thereby validates) the header and offsets.
    pub fn parse(&self) -> Result<safetensors::SafeTensors<'_>> {
        safetensors::SafeTensors::deserialize(&self.mmap).map_err(|e| self.bad(describe_st_error(&e)))
    }

    /// The `__metadata__` map.
    pub fn metadata(&self) -> Result<HashMap<String, String>> {
        let (_, meta) = safetensors::SafeTensors::read_metadata(&self.mmap).map_err(|e| self.bad(describe_st_error(&e)))?;
        Ok(meta.metadata().clone().unwrap_or_default())
    }

    /// Tensor names and shapes without loading data.
    pub fn shapes(&self) -> Result<Vec<(String, Vec<usize>, String)>> {
        let st = self.parse()?;
        Ok(st
            .iter()
            .map(|(n, v)| (n.to_string(), v.shape().to_vec(), dtype_name(v.dtype()).to_string()))
            .collect())
    }

    /// Loads tensor `name` as `dtype` on `device` (None when its dtype is not a float).
    pub fn load(&self, name: &str, transform: Transform, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
        let st = self.parse()?;
        let view = st.tensor(name).map_err(|e| self.bad(describe_st_error(&e)))?;
        load_view(&view, transform, dtype, device)
    }
}

fn describe_st_error(e: &safetensors::SafeTensorError) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::HeaderTooSmall | E::HeaderTooLarge | E::InvalidHeaderLength => "the header is damaged (not a safetensors file?)".into(),
        E::MetadataIncompleteBuffer => "the file is truncated (incomplete download?)".into(),
        E::InvalidHeader(_) | E::InvalidHeaderDeserialization(_) => "the header is not valid JSON".into(),
        other => other.to_string(),
    }
}

fn dtype_name(d: safetensors::Dtype) -> &'static str {
    use safetensors::Dtype as D;
    match d {
        D::F16 => "f16",
        D::BF16 => "bf16",
        D::F32 => "f32",
        D::F64 => "f64",
        D::I64 => "i64",
        D::I32 => "i32",
        D::U8 => "u8",
        D::F8_E4M3 => "f8_e4m3",
        D::F8_E5M2 => "f8_e5m2",
        _ => "other",
    }
}

/// Whether to read tensor data or only the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Read {
    Tensors,
    ShapesOnly,
    /// The tensors of the text encoders and the VAE only (a `--components` checkpoint: its
    /// UNet is neither read nor listed).
    Components,
}

/// The canonical-name prefixes a components checkpoint lends (see [`take_components`]).
pub const COMPONENT_PARTS: [&str; 3] = ["te1.", "te2.", "vae."];

impl Read {
    /// Whether the canonical tensor `name` is read (or listed) at all.
    pub fn covers(self, name: &str) -> bool {
        self != Read::Components || COMPONENT_PARTS.iter().any(|p| name.starts_with(p))
    }

    /// Whether tensor data is read (not only names and shapes).
    pub fn data(self) -> bool {
        self != Read::ShapesOnly
    }
}

fn is_float(d: safetensors::Dtype) -> bool {
    use safetensors::Dtype as D;
    matches!(d, D::F16 | D::BF16 | D::F32 | D::F64)
}

fn transformed_shape(shape: &[usize], transform: Transform) -> Vec<usize> {
    match transform {
        Transform::None => shape.to_vec(),
        Transform::QkvPart(_) => {
            let mut s = shape.to_vec();
            if let Some(first) = s.first_mut() {
                *first /= 3;
            }
            s
        }
        Transform::ConvToLinear if shape.len() == 4 => shape[..2].to_vec(),
        Transform::ConvToLinear => shape.to_vec(),
        Transform::Transpose => shape.iter().rev().copied().collect(),
    }
}

fn load_view(view: &safetensors::tensor::TensorView<'_>, transform: Transform, dtype: DType, device: &Device) -> Result<Option<Tensor>> {
    use safetensors::Dtype as D;
    let src = match view.dtype() {
        D::F16 => DType::F16,
        D::BF16 => DType::BF16,
        D::F32 => DType::F32,
        D::F64 => DType::F64,
        _ => return Ok(None),
    };
    let t = Tensor::from_raw_buffer(view.data(), src, view.shape(), &Device::Cpu)?;
    Ok(Some(transformed(t, transform, dtype, device)?))
}

/// A tensor as read from a file, renamed's transform applied, as `dtype` on `device`.
fn transformed(t: Tensor, transform: Transform, dtype: DType, device: &Device) -> Result<Tensor> {
    let t = match transform {
        Transform::None => t,
        Transform::QkvPart(i) => {
            let n = t.dim(0)? / 3;
            t.narrow(0, i * n, n)?
        }
        Transform::ConvToLinear => {
            let d = t.dims().to_vec();
            if d.len() == 4 { t.reshape((d[0], d[1]))? } else { t }
        }
        Transform::Transpose => t.t()?,
    };
    let t = t.to_dtype(dtype)?.contiguous()?;
    Ok(t.to_device(device)?)
}

/// A1111's short model hash: the first 10 hex digits of the file's SHA-256.
pub fn short_hash(path: &Path) -> Option<String> {
    sha256_hex(path).map(|h| h[..10].to_string())
}

/// The file's SHA-256 in hex (A1111's `sha256` of a checkpoint).
pub fn sha256_hex(path: &Path) -> Option<String> {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).ok()?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Some(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Loads a single file or a diffusers folder into canonical names.
pub fn load(path: &Path, dtype: DType, device: &Device) -> Result<Weights> {
    load_with(path, dtype, device, Read::Tensors)
}

/// Like [`load`], but every quantized GGUF tensor is dequantized at load (dense in memory:
/// faster products, the memory of f32/f16 weights). Other files load as with [`load`].
pub fn load_dequantized(path: &Path, dtype: DType, device: &Device) -> Result<Weights> {
    if path.is_file() && gguf::is_gguf(path) {
        return gguf::load(path, dtype, device, Read::Tensors, false);
    }
    load(path, dtype, device)
}

/// Reads the text encoders and the VAE of a checkpoint (file or folder), not its UNet: what
/// a UNet-only file borrows ([`take_components`]).
pub fn load_components(path: &Path, dtype: DType, device: &Device) -> Result<Weights> {
    let w = load_with(path, dtype, device, Read::Components)?;
    if w.shapes.is_empty() {
        return Err(EngineError::UnknownArchitecture(format!(
            "{} has neither text encoders nor a VAE to lend",
            path.display()
        )));
    }
    Ok(w)
}

/// Fills what `w` lacks from `from` (read with [`load_components`]): the text encoders
/// (both or none: `te1.` and `te2.` come from the same file) when `w` has none, the VAE when
/// it has none. Their configuration moves with them ([`architecture::component_configs`]),
/// so they mean in `w` what they meant in their own file. Returns the parts taken, e.g.
/// `["text encoders", "VAE"]`; nothing when `w` lacks nothing `from` has.
pub fn take_components(w: &mut Weights, mut from: Weights) -> Result<Vec<&'static str>> {
    let has = |w: &Weights, p: &str| w.shapes.keys().any(|k| k.starts_with(p));
    let configs = architecture::component_configs(&from)?;
    let mut taken = vec![];
    let text = !has(w, "te1.") && !has(w, "te2.") && (has(&from, "te1.") || has(&from, "te2."));
    let vae = !has(w, "vae.") && has(&from, "vae.");
    let mut parts = vec![];
    if text {
        parts.extend(["te1.", "te2."]);
        w.text_flavors = from.text_flavors;
        taken.push("text encoders");
    }
    if vae {
        parts.push("vae.");
        taken.push("VAE");
    }
    let moves = |k: &String| parts.iter().any(|p| k.starts_with(p));
    w.tensors.extend(from.tensors.drain().filter(|(k, _)| moves(k)));
    w.quantized.extend(from.quantized.drain().filter(|(k, _)| moves(k)));
    w.shapes.extend(from.shapes.drain().filter(|(k, _)| moves(k)));
    for (component, value) in configs {
        let part = match component {
            "vae" => "vae.",
            "text_encoder" => "te1.",
            _ => "te2.",
        };
        if parts.contains(&part) {
            w.configs.insert(component.to_string(), value);
        }
    }
    if !taken.is_empty() {
        w.stored_dtypes.extend(from.stored_dtypes);
    }
    Ok(taken)
}

/// Reads names and shapes only (for `info`: no tensor data is touched).
pub fn load_shapes(path: &Path) -> Result<Weights> {
    load_with(path, DType::F32, &Device::Cpu, Read::ShapesOnly)
}

fn load_with(path: &Path, dtype: DType, device: &Device, read: Read) -> Result<Weights> {
    if path.is_dir() {
        load_diffusers(path, dtype, device, read)
    } else if !path.exists() {
        Err(EngineError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        })
    } else {
        load_single(path, dtype, device, read)
    }
}

fn empty(layout: Layout) -> Weights {
    Weights {
        tensors: HashMap::new(),
        quantized: HashMap::new(),
        shapes: HashMap::new(),
        metadata: HashMap::new(),
        configs: HashMap::new(),
        unrecognised: vec![],
        layout,
        text_flavors: [None, None],
        stored_dtypes: BTreeSet::new(),
        bytes: 0,
    }
}

/// Layers per UNet block in an LDM file: the first downsampler sits at `input_blocks.{lpb+1}`.
fn ldm_layers_per_block(names: &[String]) -> usize {
    let prefix = "model.diffusion_model.input_blocks.";
    let mut max_block = 0;
    let mut first_op = None;
    for n in names {
        if let Some(r) = n.strip_prefix(prefix)
            && let Some((idx, tail)) = r.split_once('.')
            && let Ok(i) = idx.parse::<usize>()
        {
            max_block = max_block.max(i);
            if tail.starts_with("0.op.") {
                first_op = Some(first_op.map_or(i, |f: usize| f.min(i)));
            }
        }
    }
    first_op.map_or(max_block.max(1), |i| i - 1).max(1)
}

fn load_single(path: &Path, dtype: DType, device: &Device, read: Read) -> Result<Weights> {
    if gguf::is_gguf(path) {
        return gguf::load(path, dtype, device, read, true);
    }
    let file = SafetensorsFile::open(path)?;
    let st = file.parse()?;
    let source: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let prefix = unet_only_prefix(&source);
    let names: Vec<String> = source.iter().map(|n| format!("{prefix}{n}")).collect();
    let mut w = empty(Layout::SingleFile);
    w.metadata = file.metadata()?;
    let renamed = rename_single_file(&names, &mut w)
        .into_iter()
        .map(|(src, r)| (src[prefix.len()..].to_string(), r))
        .collect();
    read_renamed(&file, &st, renamed, &mut w, dtype, device, read)?;
    w.unrecognised.sort();
    Ok(w)
}

/// What a UNet-only file's names lack (ComfyUI's `models/unet` files, stable-diffusion.cpp's
/// `--diffusion-model`, a diffusers `unet/` file taken alone): `model.diffusion_model.` for
/// LDM names (`input_blocks.*`), `unet.` for diffusers names (`down_blocks.*`,
/// `time_embedding.*`); nothing for whole checkpoints and other files.
pub fn unet_only_prefix(names: &[String]) -> &'static str {
    let whole = [
        "model.diffusion_model.",
        "first_stage_model.",
        "cond_stage_model.",
        "conditioner.",
        "unet.",
        "vae.",
        "te1.",
        "te2.",
    ];
    let any = |p: &str| names.iter().any(|n| n.starts_with(p));
    if whole.iter().any(|p| any(p)) {
        ""
    } else if any("input_blocks.") {
        "model.diffusion_model."
    } else if any("down_blocks.") && any("time_embedding.") {
        "unet."
    } else {
        ""
    }
}

/// An LDM single file's names (as A1111 and stable-diffusion.cpp name them, or this project's
/// canonical ones) -> canonical names; sets the text encoders' flavours, lists the rest.
fn rename_single_file(names: &[String], w: &mut Weights) -> Vec<(String, Renamed)> {
    let lpb = ldm_layers_per_block(names);
    for n in names {
        if n.starts_with("cond_stage_model.transformer.") || n.starts_with("conditioner.embedders.0.transformer.") {
            w.text_flavors[0] = Some(TextFlavor::OpenAi);
        } else if n.starts_with("cond_stage_model.model.") {
            w.text_flavors[0] = Some(TextFlavor::OpenClip);
        } else if n.starts_with("conditioner.embedders.1.model.") {
            w.text_flavors[1] = Some(TextFlavor::OpenClip);
        }
    }
    let mut renamed: Vec<(String, Renamed)> = vec![];
    for n in names {
        match convert::ldm_key(n, lpb) {
            Ok(list) => renamed.extend(list.into_iter().map(|r| (n.clone(), r))),
            // Files this project writes (the embedded model, training checkpoints) use the
            // engine's canonical names (diffusers names under `unet.`, `vae.`, `te1.`, `te2.`).
            Err(k) if ["unet.", "vae.", "te1.", "te2."].iter().any(|p| k.starts_with(p)) => renamed.push((
                n.clone(),
                Renamed {
                    name: k,
                    transform: Transform::None,
                },
            )),
            Err(k) => w.unrecognised.push(k),
        }
    }
    renamed
}

/// How many decoder up blocks the renamed names have (the `@` index is resolved against it).
fn decoder_ups(renamed: &[(String, Renamed)]) -> usize {
    renamed
        .iter()
        .filter_map(|(_, r)| r.name.strip_prefix("vae.decoder.up_blocks.@"))
        .filter_map(|r| r.split_once('.').and_then(|(i, _)| i.parse::<usize>().ok()))
        .max()
        .map_or(0, |m| m + 1)
}

/// Reads the tensors of `renamed` (source name -> canonical name) into `w`.
fn read_renamed(
    file: &SafetensorsFile,
    st: &safetensors::SafeTensors,
    renamed: Vec<(String, Renamed)>,
    w: &mut Weights,
    dtype: DType,
    device: &Device,
    read: Read,
) -> Result<()> {
    let num_up = decoder_ups(&renamed);
    for (src, r) in renamed {
        if !read.covers(&r.name) {
            continue;
        }
        let view = st.tensor(&src).map_err(|e| file.bad(describe_st_error(&e)))?;
        w.stored_dtypes.insert(dtype_name(view.dtype()).to_string());
        w.bytes += view.data().len() as u64;
        if !is_float(view.dtype()) {
            continue;
        }
        let name = convert::resolve_decoder_index(&r.name, num_up);
        w.shapes.insert(name.clone(), transformed_shape(view.shape(), r.transform));
        if read.data()
            && let Some(t) = load_view(&view, r.transform, dtype, device)?
        {
            w.tensors.insert(name, t);
        }
    }
    Ok(())
}

/// Loads an ESRGAN-family upscaler (RRDBNet) into `esrgan.model.*` (old-arch names):
/// ESRGAN / 4x-UltraSharp files as they are, Real-ESRGAN's names (`conv_first`,
/// `body.N.rdbK.convJ`, `conv_body`, `conv_upK`, `conv_hr`, `conv_last`) converted.
pub fn load_upscaler(path: &Path, dtype: DType, device: &Device) -> Result<Weights> {
    let file = SafetensorsFile::open(path)?;
    let st = file.parse()?;
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let ups = (1..)
        .take_while(|k| names.iter().any(|n| n.starts_with(&format!("conv_up{k}."))))
        .count();
    let nb = names
        .iter()
        .filter_map(|n| n.strip_prefix("body.")?.split_once('.')?.0.parse::<usize>().ok())
        .max()
        .map_or(0, |m| m + 1);
    let rename = |n: &str| -> Option<String> {
        if n.starts_with("model.") {
            return Some(n.to_string());
        }
        let (stem, leaf) = n.rsplit_once('.')?;
        let p: Vec<&str> = stem.split('.').collect();
        let idx = match p.as_slice() {
            ["conv_first"] => "0".to_string(),
            ["conv_body"] => format!("1.sub.{nb}"),
            ["body", i, rdb, conv] => format!("1.sub.{i}.{}.{conv}.0", rdb.to_ascii_uppercase()),
            ["conv_hr"] => (3 * ups + 2).to_string(),
            ["conv_last"] => (3 * ups + 4).to_string(),
            [up] if up.starts_with("conv_up") => (3 * up.trim_start_matches("conv_up").parse::<usize>().ok()?).to_string(),
            _ => return None,
        };
        Some(format!("model.{idx}.{leaf}"))
    };
    let mut w = empty(Layout::SingleFile);
    let mut renamed = vec![];
    for n in &names {
        match rename(n) {
            Some(r) => renamed.push((
                n.clone(),
                Renamed {
                    name: format!("esrgan.{r}"),
                    transform: Transform::None,
                },
            )),
            None => w.unrecognised.push(n.clone()),
        }
    }
    if !renamed.iter().any(|(_, r)| r.name == "esrgan.model.0.weight") {
        return Err(EngineError::UnknownArchitecture(format!(
            "{} is not an ESRGAN-family upscaler (no model.0 / conv_first)",
            path.display()
        )));
    }
    read_renamed(&file, &st, renamed, &mut w, dtype, device, Read::Tensors)?;
    Ok(w)
}

/// Loads a tiny decoder (TAESD family: `taesd`, `taesdxl`, ...) into the names `taesd.N.*`,
/// N counting the decoder's layers from its first convolution (diffusers' `DecoderTiny`
/// numbering): a diffusers `AutoencoderTiny` folder (or pipeline folder with one in
/// `vae/`), or a single file in diffusers' names (`decoder.layers.N`) or madebyollin/taesd's
/// (`N.*`, `decoder.N.*`: index 0 is the clamp).
pub fn load_tiny_decoder(path: &Path, dtype: DType, device: &Device) -> Result<Weights> {
    let not_tiny = |why: &str| EngineError::UnknownArchitecture(format!("{} is not a tiny decoder (TAESD): {why}", path.display()));
    let files = if path.is_dir() {
        let dir = if path.join("vae").join("config.json").is_file() {
            path.join("vae")
        } else {
            path.to_path_buf()
        };
        component_files(&dir)?
    } else if path.exists() {
        vec![path.to_path_buf()]
    } else {
        return Err(EngineError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        });
    };
    let mut w = empty(Layout::SingleFile);
    for f in files {
        let file = SafetensorsFile::open(&f)?;
        let st = file.parse()?;
        let mut found: Vec<(String, usize, String)> = vec![];
        for n in st.names() {
            let rest = n
                .strip_prefix("decoder.layers.")
                .or_else(|| n.strip_prefix("decoder."))
                .or_else(|| (!n.starts_with("encoder.")).then_some(n));
            if let Some((idx, tail)) = rest.and_then(|r| r.split_once('.'))
                && let Ok(i) = idx.parse::<usize>()
            {
                found.push((n.to_string(), i, tail.to_string()));
            }
        }
        let Some(first) = found.iter().map(|f| f.1).min() else { continue };
        let renamed = found
            .into_iter()
            .map(|(src, i, tail)| {
                (
                    src,
                    Renamed {
                        name: format!("taesd.{}.{tail}", i - first),
                        transform: Transform::None,
                    },
                )
            })
            .collect();
        read_renamed(&file, &st, renamed, &mut w, dtype, device, Read::Tensors)?;
    }
    if !w.has("taesd.0.weight") {
        return Err(not_tiny("no decoder layers (decoder.layers.N.* or N.*)"));
    }
    Ok(w)
}

/// Loads a VAE on its own, into the canonical `vae.*` names: an A1111-style single file (bare
/// LDM names, `encoder.down.0...`, or with the `first_stage_model.` prefix), a diffusers-named
/// single file (`encoder.down_blocks.0...`, as the SDXL fp16-fix VAE ships), a diffusers `vae/`
/// folder, or a pipeline folder (its `vae/`). Anything else is a clear error.
pub fn load_vae(path: &Path, dtype: DType, device: &Device) -> Result<Weights> {
    let not_a_vae = |why: &str| EngineError::UnknownArchitecture(format!("{} is not a VAE: {why}", path.display()));
    if path.is_dir() {
        let dir = if path.join("vae").join("config.json").is_file() {
            path.join("vae")
        } else {
            path.to_path_buf()
        };
        let mut w = empty(Layout::Diffusers);
        let cfg = dir.join("config.json");
        if cfg.is_file() {
            w.configs.insert("vae".into(), read_json(&cfg)?);
        }
        for f in component_files(&dir)? {
            let file = SafetensorsFile::open(&f)?;
            let st = file.parse()?;
            let renamed: Vec<(String, Renamed)> = st
                .names()
                .into_iter()
                .filter_map(|n| {
                    convert::diffusers_key("vae", n).map(|c| {
                        (
                            n.to_string(),
                            Renamed {
                                name: c,
                                transform: Transform::None,
                            },
                        )
                    })
                })
                .collect();
            read_renamed(&file, &st, renamed, &mut w, dtype, device, Read::Tensors)?;
        }
        if !w.has("vae.decoder.conv_in.weight") {
            return Err(not_a_vae("the folder has no VAE decoder weights"));
        }
        return Ok(w);
    }
    if !path.exists() {
        return Err(EngineError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or folder"),
        });
    }
    let file = SafetensorsFile::open(path)?;
    let st = file.parse()?;
    let mut w = empty(Layout::SingleFile);
    w.metadata = file.metadata()?;
    let names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    let diffusers_named = names
        .iter()
        .any(|n| n.contains(".down_blocks.") || n.contains(".up_blocks.") || n.contains(".mid_block."));
    let mut renamed: Vec<(String, Renamed)> = vec![];
    for n in &names {
        let bare = ["encoder.", "decoder.", "quant_conv.", "post_quant_conv."]
            .iter()
            .any(|p| n.starts_with(p));
        let mapped = if let Some(rest) = n.strip_prefix("vae.") {
            Some(vec![Renamed {
                name: format!("vae.{rest}"),
                transform: Transform::None,
            }])
        } else if n.starts_with("first_stage_model.") {
            convert::ldm_key(n, 1).ok()
        } else if bare && diffusers_named {
            convert::diffusers_key("vae", n).map(|c| {
                vec![Renamed {
                    name: c,
                    transform: Transform::None,
                }]
            })
        } else if bare {
            convert::ldm_key(&format!("first_stage_model.{n}"), 1).ok()
        } else {
            None
        };
        match mapped {
            Some(list) => renamed.extend(list.into_iter().filter(|r| r.name.starts_with("vae.")).map(|r| (n.clone(), r))),
            None => w.unrecognised.push(n.clone()),
        }
    }
    if !renamed.iter().any(|(_, r)| r.name.starts_with("vae.decoder.")) {
        return Err(not_a_vae(
            "it has no VAE decoder tensors (encoder.*/decoder.* or first_stage_model.*)",
        ));
    }
    read_renamed(&file, &st, renamed, &mut w, dtype, device, Read::Tensors)?;
    w.unrecognised.sort();
    Ok(w)
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| EngineError::Other(format!("{}: invalid JSON: {e}", path.display())))
}

/// The safetensors files holding one diffusers component, preferring full precision.
fn component_files(dir: &Path) -> Result<Vec<PathBuf>> {
    for stem in ["diffusion_pytorch_model", "model"] {
        for variant in ["", ".fp16"] {
            let single = dir.join(format!("{stem}{variant}.safetensors"));
            if single.is_file() {
                return Ok(vec![single]);
            }
            let index = dir.join(format!("{stem}{variant}.safetensors.index.json"));
            if index.is_file() {
                let v = read_json(&index)?;
                let mut files: Vec<PathBuf> = v["weight_map"]
                    .as_object()
                    .map(|m| m.values().filter_map(|f| f.as_str()).map(|f| dir.join(f)).collect())
                    .unwrap_or_default();
                files.sort();
                files.dedup();
                return Ok(files);
            }
        }
    }
    for stem in ["diffusion_pytorch_model.bin", "pytorch_model.bin"] {
        let p = dir.join(stem);
        if p.is_file() {
            return Err(EngineError::PickleRefused {
                path: p,
                kind: "a torch .bin file",
            });
        }
    }
    Err(EngineError::UnknownArchitecture(format!(
        "{} holds no .safetensors weights",
        dir.display()
    )))
}

fn load_diffusers(dir: &Path, dtype: DType, device: &Device, read: Read) -> Result<Weights> {
    if !dir.join("model_index.json").is_file() {
        return Err(EngineError::UnknownArchitecture(format!(
            "{} is a folder without model_index.json (expected a diffusers pipeline folder)",
            dir.display()
        )));
    }
    let mut w = empty(Layout::Diffusers);
    w.configs.insert("model_index".into(), read_json(&dir.join("model_index.json"))?);
    let sched = dir.join("scheduler/scheduler_config.json");
    if sched.is_file() {
        w.configs.insert("scheduler".into(), read_json(&sched)?);
    }
    for component in ["unet", "vae", "text_encoder", "text_encoder_2"] {
        let cdir = dir.join(component);
        if !cdir.is_dir() {
            continue;
        }
        let cfg = cdir.join("config.json");
        if cfg.is_file() {
            w.configs.insert(component.into(), read_json(&cfg)?);
        }
        for f in component_files(&cdir)? {
            let file = SafetensorsFile::open(&f)?;
            let st = file.parse()?;
            for (name, view) in st.iter() {
                let Some(canon) = convert::diffusers_key(component, name).filter(|c| read.covers(c)) else {
                    continue;
                };
                w.stored_dtypes.insert(dtype_name(view.dtype()).to_string());
                w.bytes += view.data().len() as u64;
                if !is_float(view.dtype()) {
                    continue;
                }
                w.shapes.insert(canon.clone(), view.shape().to_vec());
                if read.data()
                    && let Some(t) = load_view(&view, Transform::None, dtype, device)?
                {
                    w.tensors.insert(canon, t);
                }
            }
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A safetensors file whose header length starts with bytes that look like a pickle
    /// protocol marker (0x80, 0x03) is still a safetensors file; a real pickle is refused.
    #[test]
    fn pickle_detection_looks_past_the_header_length() {
        let dir = std::env::temp_dir().join(format!("latent-pickle-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let mut header = br#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#.to_vec();
        header.resize(0x0380, b' ');
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        assert_eq!(&bytes[..2], &[0x80, 0x03]);
        bytes.extend_from_slice(&header);
        bytes.extend_from_slice(&1f32.to_le_bytes());
        let st = dir.join("model.safetensors");
        std::fs::write(&st, &bytes).expect("write");
        assert!(refuse_pickle(&st).is_ok());
        assert!(SafetensorsFile::open(&st).is_ok());
        let pickle = dir.join("model2.safetensors");
        std::fs::write(&pickle, b"\x80\x02}q\x00(X\x05\x00\x00\x00state").expect("write");
        assert!(matches!(refuse_pickle(&pickle), Err(EngineError::PickleRefused { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}

//! GGUF checkpoints: files written by the `gguf` package (llama.cpp's Python writer;
//! tests/fixtures/gguf/make_gguf_fixture.py) read back to the value, every GGML type the
//! reader knows, whole-model files generating close to their full-precision checkpoint,
//! `quantize`'s own files (written here, read back, quality per type), and bad files.

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use latent_engine::checkpoint::{self, gguf};
use latent_engine::error::EngineError;
use latent_engine::pipeline::Pipeline;
use latent_engine::pipeline::compare::latent_rel_l2;
use latent_engine::protocol::{GenerateRequest, ModelSpec};
use latent_tests::{Quiet, fixture, tiny_request};

fn gguf_fixture(name: &str) -> PathBuf {
    fixture(&format!("gguf/{name}"))
}

fn scratch(name: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("gguf-tests");
    std::fs::create_dir_all(&d).expect("dir");
    let p = d.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn python_values() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(gguf_fixture("dequantized.safetensors"), &candle_core::Device::Cpu).expect("fixture")
}

fn latents(model: &Path, request: &GenerateRequest) -> Vec<f32> {
    let pipe = Pipeline::load(&ModelSpec::new(model)).expect("load");
    pipe.generate(&pipe.validate(request).expect("valid"), &mut Quiet)
        .expect("generate")
        .latents
        .data
}

#[test]
fn every_type_reads_back_as_the_gguf_package_dequantizes_it() {
    let want = python_values();
    let mut seen = 0;
    for (key, value) in &want {
        let Some((file, name)) = key.split_once(':') else { continue };
        if name == "original" {
            continue;
        }
        let got = gguf::read_tensor(&gguf_fixture(&format!("{file}.gguf")), name).expect("reads");
        assert_eq!(got.dims(), value.dims(), "{key}");
        let (g, w): (Vec<f32>, Vec<f32>) = (
            got.flatten_all().and_then(|t| t.to_vec1()).expect("values"),
            value.flatten_all().and_then(|t| t.to_vec1()).expect("values"),
        );
        assert_eq!(g, w, "{key}: not the gguf package's values");
        seen += 1;
    }
    // 13 types in types.gguf, 4 tensors of each tiny model.
    assert!(seen >= 21, "{seen}");
}

#[test]
fn a_gguf_written_by_the_gguf_package_generates_close_to_its_checkpoint() {
    let request = tiny_request("dpm++2m", 6, 3.0, 2);
    let full = latents(&fixture("sd1/sd1-tiny.safetensors"), &request);
    for (file, tolerance) in [("sd1-tiny-q8_0.gguf", 0.02), ("sd1-tiny-q4_0.gguf", 0.15)] {
        let path = gguf_fixture(file);
        let w = checkpoint::load_shapes(&path).expect("shapes");
        assert!(
            w.stored_dtypes.contains(if file.contains("q8") { "q8_0" } else { "q4_0" }),
            "{:?}",
            w.stored_dtypes
        );
        assert!(w.unrecognised.is_empty(), "{:?}", w.unrecognised);
        let quantized = latents(&path, &request);
        let d = latent_rel_l2(&quantized, &full);
        assert!(d > 0.0 && d < tolerance, "{file}: relative L2 {d} vs the full-precision file");
    }
}

#[test]
fn quantize_writes_files_that_load_and_stay_close_per_type() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/models/latent-studio-default.safetensors");
    let request = GenerateRequest {
        prompt: "a red star on a black background".into(),
        width: 64,
        height: 64,
        steps: 10,
        cfg_scale: 2.0,
        seed: 4,
        solver: "dpm++2m".into(),
        schedule: "karras".into(),
        preview_every: 0,
        ..GenerateRequest::default()
    };
    let full = latents(&model, &request);
    // Measured at 20 steps: q8_0 2.0e-3, q4_K 9.9e-3, q4_0 3.3e-2 (README); f16 is exact
    // (the model is stored f16).
    for (t, tolerance) in [("f16", 0.0), ("q8_0", 0.01), ("q4_K", 0.04), ("q4_0", 0.1)] {
        let out = scratch(&format!("embedded-{t}.gguf"));
        let kind = gguf::parse_type(t).expect("type");
        let report = gguf::quantize_file(&model, &out, kind, &[], gguf::ConvLayout::Kept).expect("quantizes");
        assert_eq!(report.tensors, 560);
        // The embedded model names its tensors diffusers-style: `quantize` says so (such a
        // file is not one stable-diffusion.cpp reads).
        assert!(!report.ldm_names);
        if t != "f16" {
            assert!(report.quantized > 10 && report.bytes_out < report.bytes_in, "{t}: {report:?}");
        }
        let w = checkpoint::load_shapes(&out).expect("shapes");
        assert_eq!(
            w.metadata.get("latent_studio.quantized_type").map(String::as_str),
            Some(gguf::type_name(kind))
        );
        assert!(
            w.metadata
                .get("latent_studio.gguf_types")
                .is_some_and(|s| s.contains(gguf::type_name(kind)))
        );
        let d = latent_rel_l2(&latents(&out, &request), &full);
        assert!(d <= tolerance, "{t}: relative L2 {d}");
        if t != "f16" {
            assert!(d > 0.0, "{t}: nothing was quantized");
        }
        // Never over an existing file.
        let before = std::fs::metadata(&out).expect("written").len();
        let again = gguf::quantize_file(&model, &out, kind, &[], gguf::ConvLayout::Kept).expect_err("refuses");
        assert!(again.to_string().contains("never overwrites"), "{again}");
        assert_eq!(std::fs::metadata(&out).expect("still there").len(), before);
    }
    // Sensitive layers stay f16; --keep adds more.
    let shape = [64usize, 256];
    assert!(gguf::keeps_precision(
        "unet.mid_block.resnets.0.norm1.weight",
        &shape,
        GgmlDType::Q8_0,
        &[]
    ));
    assert!(gguf::keeps_precision(
        "unet.time_embedding.linear_1.weight",
        &shape,
        GgmlDType::Q8_0,
        &[]
    ));
    assert!(gguf::keeps_precision("vae.decoder.conv_in.weight", &shape, GgmlDType::Q8_0, &[]));
    assert!(!gguf::keeps_precision(
        "unet.mid_block.attentions.0.proj_in.weight",
        &shape,
        GgmlDType::Q8_0,
        &[]
    ));
    assert!(gguf::keeps_precision(
        "unet.mid_block.attentions.0.proj_in.weight",
        &shape,
        GgmlDType::Q8_0,
        &["proj_in".into()]
    ));
    assert!(
        gguf::keeps_precision("unet.x.weight", &[64, 100], GgmlDType::Q8_0, &[]),
        "rows not whole blocks"
    );
}

fn write_gguf(path: &Path, tensors: &[(&str, Tensor)]) {
    let q: Vec<(&str, QTensor)> = tensors
        .iter()
        .map(|(n, t)| (*n, QTensor::quantize(t, GgmlDType::F16).expect("f16")))
        .collect();
    let refs: Vec<(&str, &QTensor)> = q.iter().map(|(n, t)| (*n, t)).collect();
    let arch = gguf_file::Value::String("llama".into());
    let mut f = std::fs::File::create(path).expect("create");
    gguf_file::write(&mut f, &[("general.architecture", &arch)], &refs).expect("write");
}

#[test]
fn truncated_foreign_and_unet_only_files_say_what_they_are() {
    // Truncated: the header survives, the tensors do not.
    let bytes = std::fs::read(gguf_fixture("sd1-tiny-q8_0.gguf")).expect("fixture");
    let cut = scratch("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).expect("write");
    let e = Pipeline::load(&ModelSpec::new(&cut)).err().expect("refused");
    assert!(
        matches!(e, EngineError::BadGguf { .. }) && e.to_string().contains("truncated"),
        "{e}"
    );
    let header_only = scratch("header.gguf");
    std::fs::write(&header_only, &bytes[..40]).expect("write");
    let e = Pipeline::load(&ModelSpec::new(&header_only)).err().expect("refused");
    assert!(matches!(e, EngineError::BadGguf { .. }), "{e}");
    // A language model's GGUF: one line saying so.
    let dev = candle_core::Device::Cpu;
    let llama = scratch("llama.gguf");
    write_gguf(
        &llama,
        &[(
            "token_embd.weight",
            Tensor::zeros((8, 32), candle_core::DType::F32, &dev).expect("t"),
        )],
    );
    let e = Pipeline::load(&ModelSpec::new(&llama)).err().expect("refused");
    let text = e.to_string();
    assert!(
        matches!(e, EngineError::UnknownArchitecture(_)) && text.contains("llama") && !text.contains('\n'),
        "{text}"
    );
    // ComfyUI-GGUF's UNet-only kind: the UNet's names without the prefix are read as the UNet.
    let full = checkpoint::load(&fixture("sd1/sd1-tiny.safetensors"), candle_core::DType::F32, &dev).expect("load");
    let st = candle_core::safetensors::load(fixture("sd1/sd1-tiny.safetensors"), &dev).expect("raw");
    let unet: Vec<(String, Tensor)> = st
        .iter()
        .filter_map(|(n, t)| n.strip_prefix("model.diffusion_model.").map(|s| (s.to_string(), t.clone())))
        .collect();
    let unet_only = scratch("unet-only.gguf");
    let refs: Vec<(&str, Tensor)> = unet.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    write_gguf(&unet_only, &refs);
    let w = checkpoint::load(&unet_only, candle_core::DType::F32, &dev).expect("a UNet");
    let names: Vec<&String> = w.tensors.keys().collect();
    assert!(!names.is_empty() && names.iter().all(|n| n.starts_with("unet.")), "{names:?}");
    for (name, t) in &w.tensors {
        let d = (t - full.get(name).expect("same name"))
            .and_then(|d| d.abs())
            .and_then(|d| d.max_all())
            .and_then(|d| d.to_scalar::<f32>());
        assert!(d.expect("diff") < 1e-2, "{name}");
    }
}

/// Weights kept in their quantized blocks (each layer dequantizing its own weight per product)
/// give exactly the latents of the same file dequantized at load: the same arithmetic, so
/// the comparison is bit for bit; with a LoRA merged too (the patched layers dense, the base
/// still quantized). The blocks take less memory than the f16 weights would.
#[test]
fn weights_kept_quantized_generate_the_dequantized_run_bit_for_bit() {
    use latent_engine::checkpoint::architecture;
    use latent_engine::lora::LoraFile;
    use latent_engine::protocol::DType;
    let q4k = scratch("embedded-kept-q4_K.gguf");
    let embedded = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../assets/models/latent-studio-default.safetensors");
    gguf::quantize_file(&embedded, &q4k, GgmlDType::Q4K, &[], gguf::ConvLayout::Flattened).expect("quantizes");
    let kohya = LoraFile::open(&fixture("lora/sd1-kohya.safetensors")).expect("lora");
    for (path, with_lora) in [(gguf_fixture("sd1-tiny-q8_0.gguf"), true), (q4k.clone(), false)] {
        let case = path.display().to_string();
        let dev = candle_core::Device::Cpu;
        let kept = checkpoint::load(&path, candle_core::DType::F32, &dev).expect("load");
        let dense = checkpoint::load_dequantized(&path, candle_core::DType::F32, &dev).expect("load");
        assert!(kept.quantized.len() > 10, "{case}: {} kept quantized", kept.quantized.len());
        assert!(dense.quantized.is_empty(), "{case}");
        if !with_lora {
            // Flattened convolution kernels come back 4-D (comfy.gguf.orig_shape).
            assert!(kept.quantized.values().any(|q| q.shape.len() == 4), "{case}: no kernel quantized");
        }
        assert_eq!(kept.quantized.len() + kept.tensors.len(), dense.tensors.len(), "{case}");
        let quant_elems: u64 = kept.quantized.values().map(|q| q.shape.iter().product::<usize>() as u64).sum();
        let quant_bytes: u64 = kept.quantized.values().map(|q| q.bytes() as u64).sum();
        // q8_0: 34 bytes per 32 weights, q4_K: 144 per 256 (against 64 and 512 in f16).
        assert!(
            quant_bytes * 10 < quant_elems * 2 * 6,
            "{case}: {quant_bytes} bytes for {quant_elems} weights"
        );
        assert!(kept.resident_bytes() < dense.resident_bytes(), "{case}");
        for (name, q) in kept.quantized.iter().take(5) {
            let a: Vec<f32> = kept.get(name).and_then(|t| Ok(t.flatten_all()?.to_vec1()?)).expect("values");
            let b: Vec<f32> = dense.tensors[name].flatten_all().and_then(|t| t.to_vec1()).expect("values");
            assert_eq!(a, b, "{case}: {name} ({:?})", q.shape);
        }
        let request = if with_lora {
            tiny_request("dpm++2m", 4, 3.0, 2)
        } else {
            GenerateRequest {
                prompt: "a red star".into(),
                width: 64,
                height: 64,
                steps: 3,
                cfg_scale: 2.0,
                seed: 4,
                solver: "dpm++2m".into(),
                preview_every: 0,
                ..GenerateRequest::default()
            }
        };
        let mut runs = vec![];
        for w in [kept, dense] {
            let cfg = architecture::infer(&w, "m").expect("config");
            let mut pipe = Pipeline::from_weights(w, cfg, "m", DType::F32, dev.clone()).expect("pipeline");
            let plain = pipe.validate(&request).expect("valid");
            let mut out = vec![pipe.generate(&plain, &mut Quiet).expect("generate").latents.data];
            if with_lora {
                pipe.apply_loras(&[(&kohya, 0.8, 0.8)]).expect("lora applies");
                out.push(pipe.generate(&plain, &mut Quiet).expect("generate").latents.data);
            }
            runs.push(out);
        }
        assert_eq!(runs[0], runs[1], "{case}: the kept-quantized run differs from the dequantized one");
        if with_lora {
            assert!(latent_rel_l2(&runs[0][1], &runs[0][0]) > 1e-4, "{case}: the LoRA changed nothing");
        }
    }
}

/// ComfyUI-GGUF's UNet-only file with flattened, quantized convolution kernels (written by the
/// `gguf` package as ComfyUI-GGUF's converter does): every kernel comes back in its model shape,
/// kept quantized, with the values of the full-precision UNet within q8_0's error.
#[test]
fn comfyui_gguf_flattened_kernels_come_back_in_their_shapes() {
    let dev = candle_core::Device::Cpu;
    let path = gguf_fixture("sd1-tiny-unet-comfy-q8_0.gguf");
    let full = checkpoint::load(&fixture("sd1/sd1-tiny.safetensors"), candle_core::DType::F32, &dev).expect("load");
    let w = checkpoint::load(&path, candle_core::DType::F32, &dev).expect("a UNet");
    let kernels: Vec<&String> = w.quantized.iter().filter(|(_, q)| q.shape.len() == 4).map(|(n, _)| n).collect();
    assert!(kernels.len() >= 4, "{kernels:?}");
    let mut checked = 0;
    for name in w.shapes.keys() {
        assert!(name.starts_with("unet."), "{name}");
        assert_eq!(
            w.shape(name).expect("shape"),
            full.shape(name).expect("in the full model"),
            "{name}"
        );
        let (a, b) = (w.get(name).expect("value"), full.get(name).expect("value"));
        let scale = b.abs().and_then(|t| t.max_all()).and_then(|t| t.to_scalar::<f32>()).expect("max");
        let d = (a - b)
            .and_then(|t| t.abs())
            .and_then(|t| t.max_all())
            .and_then(|t| t.to_scalar::<f32>())
            .expect("diff");
        assert!(d <= scale / 100.0 + 1e-6, "{name}: {d} of {scale}");
        checked += 1;
    }
    assert_eq!(checked, full.names_with_prefix("unet.").count());
    // A recorded shape that does not hold the tensor's values is refused in one line.
    let wrong = scratch("wrong-orig-shape.gguf");
    let t = QTensor::quantize(
        &Tensor::zeros((36, 256), candle_core::DType::F32, &dev).expect("t"),
        GgmlDType::Q8_0,
    )
    .expect("q");
    let shape = gguf_file::Value::Array([32, 32, 3, 4].iter().map(|&d| gguf_file::Value::I32(d)).collect());
    let mut f = std::fs::File::create(&wrong).expect("create");
    gguf_file::write(
        &mut f,
        &[("comfy.gguf.orig_shape.input_blocks.1.0.in_layers.2.weight", &shape)],
        &[("input_blocks.1.0.in_layers.2.weight", &t)],
    )
    .expect("write");
    drop(f);
    let e = checkpoint::load(&wrong, candle_core::DType::F32, &dev).expect_err("refused");
    let text = e.to_string();
    assert!(
        matches!(e, EngineError::BadGguf { .. }) && text.contains("orig_shape") && !text.contains('\n'),
        "{text}"
    );
}

/// A UNet-only file (ComfyUI-GGUF's kind) opens with the text encoders and VAE of a whole
/// checkpoint (`ModelSpec::components`: the CLI's `--components`, the window's Components
/// picker). The pair generates exactly what the whole checkpoint generates with its UNet
/// swapped for the file's, and the image's parameters name the lending checkpoint. Alone the
/// file is refused in one line naming the option; a checkpoint of another family is refused
/// saying what was taken from it; a whole checkpoint given components takes nothing.
#[test]
fn a_unet_only_file_opens_with_the_components_of_a_whole_checkpoint() {
    use latent_engine::checkpoint::architecture;
    use latent_engine::protocol::DType;
    let dev = candle_core::Device::Cpu;
    let unet = gguf_fixture("sd1-tiny-unet-comfy-q8_0.gguf");
    let whole = fixture("sd1/sd1-tiny.safetensors");
    let e = Pipeline::load(&ModelSpec::new(&unet)).err().expect("refused");
    let text = e.to_string();
    assert!(
        matches!(e, EngineError::UnknownArchitecture(_)) && text.contains("--components") && !text.contains('\n'),
        "{text}"
    );
    let note = gguf::describe(&unet).expect("header");
    assert!(note.starts_with("q8_0 ") && note.ends_with("; UNet only"), "{note}");
    let whole_note = gguf::describe(&gguf_fixture("sd1-tiny-q8_0.gguf")).expect("header");
    assert!(whole_note.starts_with("q8_0 ") && !whole_note.contains("UNet"), "{whole_note}");
    let with = |model: &Path, components: &Path| {
        Pipeline::load(&ModelSpec {
            components: Some(components.to_path_buf()),
            ..ModelSpec::new(model)
        })
    };
    let pipe = with(&unet, &whole).expect("loads with components");
    let request = tiny_request("dpm++2m", 4, 5.0, 11);
    let out = pipe
        .generate(&pipe.validate(&request).expect("valid"), &mut Quiet)
        .expect("generate");
    assert!(out.metadata.contains("Components: sd1-tiny.safetensors"), "{}", out.metadata);
    // The reference: the whole checkpoint's weights with the file's UNet put in by hand.
    let mut w = checkpoint::load(&whole, candle_core::DType::F32, &dev).expect("whole");
    let u = checkpoint::load(&unet, candle_core::DType::F32, &dev).expect("unet");
    assert!(!u.quantized.is_empty() && u.shapes.keys().all(|k| k.starts_with("unet.")));
    w.tensors.retain(|k, _| !k.starts_with("unet."));
    w.shapes.retain(|k, _| !k.starts_with("unet."));
    w.tensors.extend(u.tensors);
    w.quantized.extend(u.quantized);
    w.shapes.extend(u.shapes);
    let cfg = architecture::infer(&w, "swapped").expect("config");
    assert_eq!(cfg.unet, pipe.config.unet);
    let swapped = Pipeline::from_weights(w, cfg, "swapped", DType::F32, dev).expect("pipeline");
    let reference = swapped
        .generate(&swapped.validate(&request).expect("valid"), &mut Quiet)
        .expect("generate");
    assert_eq!(out.latents.data, reference.latents.data);
    // Text encoders and VAE of SDXL under an SD 1 UNet: refused, saying what was taken.
    let e = with(&unet, &fixture("sdxl/sdxl-tiny.safetensors")).err().expect("refused");
    let text = e.to_string();
    assert!(
        text.contains("text encoders and VAE taken from sdxl-tiny.safetensors") && !text.contains('\n'),
        "{text}"
    );
    // A whole checkpoint keeps its own parts; its images do not name the components.
    let own = with(&whole, &fixture("sd2/sd2-tiny.safetensors")).expect("loads");
    let out = own.generate(&own.validate(&request).expect("valid"), &mut Quiet).expect("generate");
    assert!(!out.metadata.contains("Components"), "{}", out.metadata);
    assert_eq!(out.latents.data, latents(&whole, &request));
}

/// An original-layout checkpoint keeps its names through `quantize` (what stable-diffusion.cpp
/// needs: checked once with it on an SD 1.5-size file, `packaging/bench/sdcpp_reads_gguf.py`),
/// and the report says they are LDM names.
#[test]
fn quantize_keeps_an_original_checkpoints_names() {
    let src = fixture("sd1/sd1-tiny.safetensors");
    let out = scratch("sd1-tiny-ldm-q8_0.gguf");
    let report = gguf::quantize_file(&src, &out, GgmlDType::Q8_0, &[], gguf::ConvLayout::Kept).expect("quantizes");
    assert!(report.ldm_names);
    let st = candle_core::safetensors::load(&src, &candle_core::Device::Cpu).expect("raw");
    assert_eq!(report.tensors, st.len());
    for (name, t) in &st {
        let back = gguf::read_tensor(&out, name).unwrap_or_else(|e| panic!("{name} renamed or lost: {e}"));
        assert_eq!(back.dims(), t.dims(), "{name}");
    }
}

//! Small benchmarks: `bench lora` (merge / strength change / removal) and `bench attention`.

use anyhow::Result;

use super::rss_bytes;

/// Writes a random-weight checkpoint of the preset `config` (canonical names, which the
/// loader reads as it reads its own files) to `out`; never over an existing file.
pub fn random_model(config: &str, dtype: latent_engine::DType, out: &std::path::Path) -> Result<()> {
    use super::presets::preset;
    use latent_engine::nets::shapes::random_weights;
    let cfg = preset(config).ok_or_else(|| anyhow::anyhow!("unknown --config '{config}' (sd15, sd21, sdxl)"))?;
    if out.exists() {
        anyhow::bail!("{} exists; bench random-model never overwrites a file", out.display());
    }
    let cdt = match dtype {
        latent_engine::DType::F32 => candle_core::DType::F32,
        latent_engine::DType::F16 => candle_core::DType::F16,
        latent_engine::DType::BF16 => candle_core::DType::BF16,
    };
    let w = random_weights(&cfg, cdt, &candle_core::Device::Cpu)?;
    let params: usize = w.tensors.values().map(|t| t.elem_count()).sum();
    candle_core::safetensors::save(&w.tensors, out)?;
    println!(
        "wrote {}: random {config}, {} tensors, {:.0} M parameters, {dtype:?}",
        out.display(),
        w.tensors.len(),
        params as f64 / 1e6
    );
    Ok(())
}

/// Time to merge, re-weight and remove a LoRA on a random-weight model of a real size.
pub fn lora(config: &str, rank: usize) -> Result<()> {
    use super::presets::preset;
    use latent_engine::lora::LoraFile;
    use latent_engine::lora::file::Module;
    use latent_engine::lora::keys::Part;
    use latent_engine::nets::shapes::random_weights;
    use latent_engine::pipeline::Pipeline;
    use std::time::Instant;
    let cfg = preset(config).ok_or_else(|| anyhow::anyhow!("unknown --config '{config}' (sd15, sd21, sdxl)"))?;
    let t0 = Instant::now();
    let w = random_weights(&cfg, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let mut pipe = Pipeline::from_weights(w, cfg, config, latent_engine::DType::F32, candle_core::Device::Cpu)?;
    eprintln!("built random {config} in {:.1} s", t0.elapsed().as_secs_f64());
    // A rank-`rank` LoRA on every attention projection and feed-forward layer of the UNet.
    let mut modules = std::collections::BTreeMap::new();
    let targets: Vec<(String, Vec<usize>)> = pipe
        .base_weights()
        .shapes
        .iter()
        .filter(|(k, s)| {
            k.starts_with("unet.")
                && s.len() == 2
                && (k.contains(".attn1.") || k.contains(".attn2.") || k.contains(".ff.net."))
                && k.ends_with(".weight")
        })
        .map(|(k, s)| (k.clone(), s.clone()))
        .collect();
    let mut lora_params = 0usize;
    for (name, shape) in &targets {
        let key = format!(
            "lora_unet_{}",
            name.trim_start_matches("unet.").trim_end_matches(".weight").replace('.', "_")
        );
        let dev = candle_core::Device::Cpu;
        let down = candle_core::Tensor::randn(0f32, 0.01, (rank, shape[1]), &dev)?;
        let up = candle_core::Tensor::randn(0f32, 0.01, (shape[0], rank), &dev)?;
        lora_params += down.elem_count() + up.elem_count();
        let parts = std::collections::HashMap::from([
            (Part::Down, down),
            (Part::Up, up),
            (Part::Alpha, candle_core::Tensor::new(&[rank as f32 / 2.0], &dev)?),
        ]);
        modules.insert(key.clone(), Module { key, parts });
    }
    let file = LoraFile {
        path: "synthetic".into(),
        name: format!("rank{rank}"),
        modules,
        stray: vec![],
        metadata: Default::default(),
        peft_alpha: None,
        tensors: targets.len() * 3,
        hash: "synthetic".into(),
    };
    let touched: usize = targets.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    let rss0 = rss_bytes();
    let t = Instant::now();
    let reports = pipe.apply_loras(&[(&file, 1.0, 1.0)])?;
    let first = t.elapsed();
    let rss1 = rss_bytes();
    let mut changes = vec![];
    for s in [0.5f32, 0.8, 1.2] {
        let t = Instant::now();
        pipe.apply_loras(&[(&file, s, s)])?;
        changes.push(t.elapsed().as_secs_f64());
    }
    let t = Instant::now();
    pipe.apply_loras(&[])?;
    let removal = t.elapsed();
    changes.sort_by(f64::total_cmp);
    println!("| model | LoRA | layers | apply | strength change (median of 3) | remove | extra memory held |");
    println!("|---|---|---|---|---|---|---|");
    println!(
        "| {config} (random, f32) | rank {rank}, {:.1} M params | {} | {:.2} s | {:.2} s | {:.2} s | {:.0} MiB merged weights (RSS +{:.0} MiB) |",
        lora_params as f64 / 1e6,
        reports[0].applied,
        first.as_secs_f64(),
        changes[1],
        removal.as_secs_f64(),
        touched as f64 * 4.0 / (1 << 20) as f64,
        (rss1.saturating_sub(rss0)) as f64 / (1 << 20) as f64
    );
    Ok(())
}

/// `bench attention`: attention alone at the shapes the real models run (batch 2 = one CFG
/// step), through [`latent_engine::nets::layers::attention`] (the fused kernel where this
/// build and the inputs allow it) and through the chunked path, with the time of each and the
/// largest difference between them relative to the largest output value.
pub fn attention(device: latent_engine::DeviceKind, dtype: latent_engine::DType, iters: usize) -> Result<()> {
    use candle_core::{DType as C, Tensor};
    use latent_engine::nets::layers::{attention, attention_is_fused, attention_unfused};
    use std::time::Instant;
    let dev = latent_engine::pipeline::open_device(device)?;
    let cdt = match dtype {
        latent_engine::DType::F32 => C::F32,
        latent_engine::DType::F16 => C::F16,
        latent_engine::DType::BF16 => C::BF16,
    };
    // (what, query tokens, key tokens, heads, head size)
    let shapes = [
        ("SD 1.x 512, level 1 self", 4096, 4096, 8, 40),
        ("SD 1.x 512, level 1 cross", 4096, 77, 8, 40),
        ("SD 1.x 512, level 2 self", 1024, 1024, 8, 80),
        ("SD 1.x 512, level 3 self", 256, 256, 8, 160),
        ("SD 2.x 768, level 1 self", 9216, 9216, 5, 64),
        ("SDXL 1024, level 2 self", 4096, 4096, 10, 64),
        ("SDXL 1024, level 2 cross", 4096, 77, 10, 64),
        ("SDXL 1024, level 3 self", 1024, 1024, 20, 64),
    ];
    println!("attention on {device:?}, {}, batch 2, median of {iters}", dtype.name());
    println!("| shape | queries x keys, heads x size | fused | chunked s | fused s | speed-up | max diff / max |");
    println!("|---|---|---|---|---|---|---|");
    for (i, (what, n, m, heads, d)) in shapes.into_iter().enumerate() {
        let rand = |len: usize, salt: u64| -> Result<Tensor> {
            let t = Tensor::randn(0f32, 1f32, (2, len, heads * d), &candle_core::Device::Cpu)?;
            // A fixed, different tensor per shape and role without a global seed.
            let shift = (i as f64 * 0.01) + salt as f64 * 0.001;
            Ok((t + shift)?.to_dtype(cdt)?.to_device(&dev)?)
        };
        let (q, k, v) = (rand(n, 1)?, rand(m, 2)?, rand(m, 3)?);
        let fused = attention_is_fused(&q, heads, false);
        let time = |f: &dyn Fn() -> latent_engine::Result<Tensor>| -> Result<(f64, Tensor)> {
            let mut out = f()?;
            dev.synchronize()?;
            let mut times = vec![];
            for _ in 0..iters {
                let t0 = Instant::now();
                out = f()?;
                dev.synchronize()?;
                times.push(t0.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            Ok((times[times.len() / 2], out))
        };
        let (t_chunked, a) = time(&|| attention_unfused(&q, &k, &v, heads, false))?;
        let (t_fused, b) = time(&|| attention(&q, &k, &v, heads, false))?;
        let a = a.to_dtype(C::F32)?;
        let diff = (&a - b.to_dtype(C::F32)?)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        let top = a.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?.max(1e-12);
        println!(
            "| {what} | {n} x {m}, {heads} x {d} | {} | {t_chunked:.4} | {t_fused:.4} | {:.2}x | {:.1e} |",
            if fused { "yes" } else { "no" },
            t_chunked / t_fused.max(1e-12),
            diff / top
        );
    }
    Ok(())
}

/// `bench preview`: per-step preview cost, tiny decoder vs latent projection.
pub fn preview(size: usize, iters: usize) -> Result<()> {
    use candle_core::Tensor;
    use latent_engine::nets::taesd::TinyDecoder;
    use latent_engine::nets::weights::{Layout, Weights};
    use std::collections::HashMap;
    use std::time::Instant;
    let dev = candle_core::Device::Cpu;
    // TAESD's decoder: conv 4->64, 3 blocks, (up, conv, 3 blocks) x2, up, conv, block, conv 64->3.
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut conv = |name: String, o: usize, i: usize, k: usize, bias: bool| -> Result<()> {
        let scale = 1.0 / ((i * k * k) as f64).sqrt();
        tensors.insert(format!("{name}.weight"), (Tensor::randn(0f32, 1f32, (o, i, k, k), &dev)? * scale)?);
        if bias {
            tensors.insert(format!("{name}.bias"), Tensor::zeros(o, candle_core::DType::F32, &dev)?);
        }
        Ok(())
    };
    let mut idx = 0;
    conv(format!("taesd.{idx}"), 64, 4, 3, true)?;
    idx += 2;
    for (blocks, last) in [(3, false), (3, false), (3, false), (1, true)] {
        for _ in 0..blocks {
            for j in [0, 2, 4] {
                conv(format!("taesd.{idx}.conv.{j}"), 64, 64, 3, true)?;
            }
            idx += 1;
        }
        if last {
            conv(format!("taesd.{idx}"), 3, 64, 3, true)?;
        } else {
            idx += 1;
            conv(format!("taesd.{idx}"), 64, 64, 3, false)?;
            idx += 1;
        }
    }
    let w = Weights {
        shapes: tensors.iter().map(|(k, t)| (k.clone(), t.dims().to_vec())).collect(),
        tensors,
        quantized: Default::default(),
        metadata: HashMap::new(),
        configs: HashMap::new(),
        unrecognised: vec![],
        layout: Layout::SingleFile,
        text_flavors: [None, None],
        stored_dtypes: Default::default(),
        bytes: 0,
    };
    let tiny = TinyDecoder::new(&w)?;
    let z = Tensor::randn(0f32, 1f32, (1, 4, size / 8, size / 8), &dev)?;
    let median = |f: &dyn Fn() -> Result<()>| -> Result<f64> {
        f()?;
        let mut t = vec![];
        for _ in 0..iters {
            let t0 = Instant::now();
            f()?;
            t.push(t0.elapsed().as_secs_f64());
        }
        t.sort_by(f64::total_cmp);
        Ok(t[t.len() / 2])
    };
    let t_tiny = median(&|| {
        tiny.decode(&z)?;
        Ok(())
    })?;
    let t_proj = median(&|| {
        latent_engine::preview::LatentRgb::SD1.project(&z)?;
        Ok(())
    })?;
    println!(
        "preview of a {size}x{size} image ({}x{} latents), CPU, median of {iters}",
        size / 8,
        size / 8
    );
    println!("| preview | output | seconds per step |");
    println!("|---|---|---|");
    println!("| latent projection | {}x{} | {t_proj:.5} |", size / 8, size / 8);
    println!("| tiny decoder (TAESD size) | {size}x{size} | {t_tiny:.4} |");
    Ok(())
}

//! What a file or the engine is: `info` (checkpoints), `lora-info`, `solvers`.

use std::path::Path;

use anyhow::Result;
use latent_engine::lora::LoraFile;
use latent_engine::pipeline::inspect;
use latent_engine::sampling::SOLVERS;
use latent_engine::sampling::schedule::SCHEDULES;

/// `info --device`: the CPU kernel set chosen at run time, the threads, and the GPU backends
/// this build has.
pub fn device() {
    println!("cpu kernels: {}", latent_engine::kernels::cpu_kernel_set());
    println!("threads:     {} (RAYON_NUM_THREADS to change)", rayon_threads());
    let gpu: Vec<&str> = [(cfg!(feature = "cuda"), "cuda"), (cfg!(feature = "metal"), "metal")]
        .into_iter()
        .filter_map(|(on, n)| on.then_some(n))
        .collect();
    println!(
        "gpu:         {}",
        if gpu.is_empty() {
            "none in this build (features cuda, metal)".to_string()
        } else {
            gpu.join(", ")
        }
    );
}

fn rayon_threads() -> usize {
    std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(num_cpus::get_physical)
}

/// `info`: family, inferred configuration, dtypes, parameter counts, unrecognised tensors.
pub fn info(path: &Path) -> Result<()> {
    let (cfg, report) = inspect(path)?;
    println!("path:        {}", path.display());
    println!("family:      {}", cfg.family.name());
    println!("prediction:  {:?}", cfg.prediction);
    println!(
        "stored as:   {} ({:.1} MB of tensors)",
        report.stored_dtypes.join(", "),
        report.bytes as f64 / 1e6
    );
    println!("native size: {}x{}", cfg.default_size.0, cfg.default_size.1);
    for (i, t) in cfg.text.iter().enumerate() {
        println!(
            "text {}:      width {}, {} layers, {} heads, {:?}, vocabulary {}, {} positions{}",
            i + 1,
            t.hidden,
            t.layers,
            t.heads,
            t.activation,
            t.vocab,
            t.max_positions,
            t.projection.map(|p| format!(", projection {p}")).unwrap_or_default()
        );
    }
    let u = &cfg.unet;
    println!(
        "unet:        channels {:?}, {} layers/block, attention depth down {:?} mid {:?}, heads {:?}, context {}, {} projection, {} groups{}",
        u.block_out_channels,
        u.layers_per_block,
        u.down_attention,
        u.mid_attention,
        u.heads,
        u.context_dim,
        if u.linear_projection { "linear" } else { "conv" },
        u.groups,
        u.addition
            .map(|(d, n)| format!(", size conditioning {d}x6 (+pooled, {n} in)"))
            .unwrap_or_default()
    );
    let v = &cfg.vae;
    println!(
        "vae:         channels {:?}, {} latent channels, {}x downscale, scaling factor {}",
        v.block_out_channels,
        v.latent_channels,
        v.scale(),
        v.scaling_factor
    );
    for (label, n) in &report.parameters {
        println!("parameters:  {label}: {:.2} M", *n as f64 / 1e6);
    }
    if report.unrecognised.is_empty() {
        println!("unrecognised tensors: none");
    } else {
        println!("unrecognised tensors: {}", report.unrecognised.len());
        for k in report.unrecognised.iter().take(20) {
            println!("  {k}");
        }
        if report.unrecognised.len() > 20 {
            println!("  ... and {} more", report.unrecognised.len() - 20);
        }
    }
    Ok(())
}

/// `lora-info`: format, target family, rank, alpha, layers, trigger words.
pub fn lora_info(path: &Path) -> Result<()> {
    let f = LoraFile::open(path)?;
    let formats: Vec<String> = f.formats().iter().map(|(fmt, n)| format!("{} ({n} layers)", fmt.name())).collect();
    println!("path:        {}", path.display());
    println!("format:      {}", formats.join(", "));
    println!("made for:    {}", f.target_family());
    let mut by_part: std::collections::BTreeMap<&str, usize> = Default::default();
    for m in f.modules.values() {
        *by_part.entry(m.component()).or_insert(0) += 1;
    }
    let parts: Vec<String> = by_part.iter().map(|(c, n)| format!("{c} {n}")).collect();
    println!("layers:      {} ({})", f.modules.len(), parts.join(", "));
    let ranks: std::collections::BTreeSet<usize> = f.modules.values().filter_map(|m| m.rank()).collect();
    let alphas: std::collections::BTreeSet<String> = f.modules.values().filter_map(|m| m.alpha()).map(|a| format!("{a}")).collect();
    println!(
        "rank:        {}",
        ranks.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(", ")
    );
    let alpha_text = if alphas.is_empty() {
        f.peft_alpha
            .map_or("not stored (scale 1)".to_string(), |a| format!("{a} (adapter metadata)"))
    } else {
        alphas.into_iter().collect::<Vec<_>>().join(", ")
    };
    println!("alpha:       {alpha_text}");
    println!("tensors:     {} ({} not part of any LoRA layer)", f.tensors, f.stray.len());
    if let Some(m) = f
        .metadata
        .get("ss_sd_model_name")
        .or_else(|| f.metadata.get("ss_base_model_version"))
    {
        println!("trained on:  {m}");
    }
    let words = f.trigger_words(10);
    if !words.is_empty() {
        let w: Vec<String> = words.iter().map(|(t, c)| format!("{t} ({c})")).collect();
        println!("trigger words (training tag counts): {}", w.join(", "));
    }
    println!("short hash:  {}", f.hash);
    Ok(())
}

/// `solvers`: the solvers with their order and cost, and the schedules.
pub fn solvers() -> Result<()> {
    println!(
        "{:<13} {:>5} {:>9} {:>10}  reference (diffusers)",
        "solver", "order", "NFE/step", "stochastic"
    );
    for s in SOLVERS {
        let stochastic = if s.stochastic { "yes" } else { "no" };
        println!(
            "{:<13} {:>5} {:>9} {:>10}  {}",
            s.name, s.order, s.evals_per_step, stochastic, s.reference
        );
    }
    println!("\nNFE per step doubles with classifier-free guidance (unless --cfg 1); --cfg-until F keeps it");
    println!("for the first fraction F of the steps only.\n\nschedules:");
    for (name, what) in SCHEDULES {
        println!("  {name:<13} {what}");
    }
    Ok(())
}

//! The command line end to end: a successful run, and one test per bad-input class (each must
//! exit non-zero with one clear line, no panic, and leave existing files untouched).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_latent-studio"))
}

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(rel)
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("latent-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let p = dir.join(name);
    let _ = std::fs::remove_file(&p);
    p
}

fn generate(model: &Path, extra: &[&str], out: &Path) -> Output {
    let mut c = bin();
    c.args(["generate", "--model"])
        .arg(model)
        .args(["--prompt", "a cat", "--seed", "1", "--steps", "3", "--out"])
        .arg(out)
        .args(extra);
    c.output().expect("run latent-studio")
}

/// Fails with exactly one `error:` line mentioning `needle`, and no panic.
fn assert_clean_failure(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].to_lowercase().contains(&needle.to_lowercase()),
        "expected '{needle}' in: {}",
        errors[0]
    );
}

#[test]
fn generate_writes_a_png_with_a1111_parameters_and_latents() {
    let out = scratch("ok.png");
    let lat = scratch("ok.safetensors");
    let o = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--latents-out", lat.to_str().expect("utf8")],
        &out,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&out).expect("png")));
    let reader = decoder.read_info().expect("png header");
    let info = reader.info();
    assert_eq!((info.width, info.height), (64, 64));
    let text = info
        .uncompressed_latin1_text
        .iter()
        .find(|t| t.keyword == "parameters")
        .expect("parameters chunk")
        .text
        .clone();
    // A1111's reader: the last line must yield at least 3 pairs with this expression.
    let re = regex::Regex::new(r#"\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)"#).expect("regex");
    let last = text.lines().last().expect("lines");
    let pairs: Vec<(String, String)> = re.captures_iter(last).map(|c| (c[1].to_string(), c[2].to_string())).collect();
    assert!(pairs.len() >= 3, "{text}");
    assert!(pairs.contains(&("Seed".into(), "1".into())), "{pairs:?}");
    assert!(pairs.contains(&("Steps".into(), "3".into())), "{pairs:?}");
    assert!(text.starts_with("a cat\n"), "{text}");
    let tensors = candle_core::safetensors::load(&lat, &candle_core::Device::Cpu).expect("latents file");
    assert_eq!(tensors["latents"].dims(), &[1, 4, 32, 32]);
}

#[test]
fn info_describes_each_family_and_layout() {
    for (path, family) in [
        ("sd1/sd1-tiny.safetensors", "SD 1.x"),
        ("sd2/diffusers", "SD 2.x"),
        ("sdxl/sdxl-tiny.safetensors", "SDXL"),
    ] {
        let o = bin().arg("info").arg(fixture(path)).output().expect("run");
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(stdout.contains(&format!("family:      {family}")), "{stdout}");
        assert!(stdout.contains("unrecognised tensors: none"), "{stdout}");
    }
}

#[test]
fn missing_file() {
    assert_clean_failure(
        &generate(Path::new("/nonexistent/model.safetensors"), &[], &scratch("m.png")),
        "not found",
    );
}

#[test]
fn truncated_file() {
    let src = std::fs::read(fixture("sd1/sd1-tiny.safetensors")).expect("fixture");
    let p = scratch("truncated.safetensors");
    std::fs::write(&p, &src[..src.len() / 2]).expect("write");
    assert_clean_failure(&generate(&p, &[], &scratch("t.png")), "truncated");
}

#[test]
fn garbage_file() {
    let p = scratch("garbage.safetensors");
    std::fs::write(&p, vec![0x5au8; 4096]).expect("write");
    assert_clean_failure(&generate(&p, &[], &scratch("g.png")), "not a valid safetensors");
}

#[test]
fn pickle_files_are_refused() {
    let ckpt = scratch("model.ckpt");
    std::fs::write(&ckpt, b"PK\x03\x04whatever").expect("write");
    assert_clean_failure(&generate(&ckpt, &[], &scratch("p.png")), "pickle");
    // Same bytes behind a .safetensors name: refused by content.
    let disguised = scratch("disguised.safetensors");
    std::fs::write(&disguised, b"\x80\x02}q\x00.").expect("write");
    assert_clean_failure(&generate(&disguised, &[], &scratch("p2.png")), "pickle");
}

#[test]
fn unknown_architecture() {
    let p = scratch("foreign.safetensors");
    let t = candle_core::Tensor::zeros((4, 4), candle_core::DType::F32, &candle_core::Device::Cpu).expect("tensor");
    candle_core::safetensors::save(&std::collections::HashMap::from([("encoder.layer.0.weight".to_string(), t)]), &p).expect("save");
    assert_clean_failure(&generate(&p, &[], &scratch("u.png")), "unrecognised model");
}

#[test]
fn width_not_a_multiple_of_8() {
    assert_clean_failure(
        &generate(&fixture("sd1/sd1-tiny.safetensors"), &["--width", "60"], &scratch("w.png")),
        "multiples of 8",
    );
}

#[test]
fn zero_steps() {
    assert_clean_failure(
        &generate(&fixture("sd1/sd1-tiny.safetensors"), &["--steps", "0"], &scratch("z.png")),
        "steps",
    );
}

#[test]
fn feature_cache_runs_shallow_evaluations_and_refuses_zero() {
    let out = scratch("fc.png");
    let o = generate(&fixture("sd1/sd1-tiny.safetensors"), &["--feature-cache", "2"], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // 3 steps with CFG: whole at step 0 and 2 (4 evaluations), shallow at step 1 (2).
    assert!(stderr.contains("NFE 6 (2 shallow: feature cache)"), "{stderr}");
    assert_clean_failure(
        &generate(&fixture("sd1/sd1-tiny.safetensors"), &["--feature-cache", "0"], &scratch("fc0.png")),
        "feature cache",
    );
}

#[test]
fn nan_guidance() {
    assert_clean_failure(
        &generate(&fixture("sd1/sd1-tiny.safetensors"), &["--cfg", "NaN"], &scratch("n.png")),
        "CFG scale",
    );
}

#[test]
fn nan_weights_give_a_clear_error() {
    // Overwrite one f16 tensor of the fixture with NaN in place (header and metadata kept).
    let mut bytes = std::fs::read(fixture("sd1/sd1-tiny.safetensors")).expect("fixture");
    let header_len = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).expect("header");
    let offsets = &header["model.diffusion_model.out.2.bias"]["data_offsets"];
    let (start, end) = (
        offsets[0].as_u64().expect("start") as usize,
        offsets[1].as_u64().expect("end") as usize,
    );
    for half in bytes[8 + header_len + start..8 + header_len + end].chunks_mut(2) {
        half.copy_from_slice(&0x7e00u16.to_le_bytes());
    }
    let p = scratch("nan.safetensors");
    std::fs::write(&p, &bytes).expect("write");
    let out = scratch("nan.png");
    assert_clean_failure(&generate(&p, &[], &out), "NaN");
    assert!(!out.exists(), "no image is written for a failed run");
}

#[test]
fn an_existing_output_is_never_overwritten() {
    let out = scratch("keep.png");
    std::fs::write(&out, b"the user's picture").expect("write");
    assert_clean_failure(&generate(&fixture("sd1/sd1-tiny.safetensors"), &[], &out), "already exists");
    assert_eq!(std::fs::read(&out).expect("read"), b"the user's picture");
}

#[test]
fn a_failed_run_leaves_the_output_untouched() {
    // Fails after loading (bad size): nothing appears at the output path, no temporary files stay.
    let out = scratch("never.png");
    assert_clean_failure(
        &generate(&fixture("sd1/sd1-tiny.safetensors"), &["--height", "12"], &out),
        "multiples of 8",
    );
    assert!(!out.exists());
    let dir = out.parent().expect("dir");
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn unknown_solver_and_dtype() {
    assert_clean_failure(
        &generate(&fixture("sd1/sd1-tiny.safetensors"), &["--solver", "magic"], &scratch("s.png")),
        "unknown solver",
    );
    assert_clean_failure(
        &generate(&fixture("sd1/sd1-tiny.safetensors"), &["--dtype", "f8"], &scratch("d.png")),
        "dtype",
    );
}

#[test]
fn lora_info_and_generate_with_loras() {
    let o = bin()
        .arg("lora-info")
        .arg(fixture("lora/sd1-kohya.safetensors"))
        .output()
        .expect("run");
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("format:      LoRA (84 layers)"), "{stdout}");
    assert!(stdout.contains("red (12)"), "{stdout}");
    let out = scratch("lora.png");
    let lora = format!("{}:0.8", fixture("lora/sd1-kohya.safetensors").display());
    let o = generate(&fixture("sd1/sd1-tiny.safetensors"), &["--lora", &lora], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("84/84 layers applied"), "{stderr}");
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("png")
        .expect("parameters");
    assert!(text.contains("Lora hashes: \"sd1-kohya: "), "{text}");
}

#[test]
fn a_lora_for_another_family_is_a_clear_error() {
    let lora = fixture("lora/sdxl-kohya.safetensors");
    let o = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--lora", lora.to_str().expect("utf8")],
        &scratch("f.png"),
    );
    assert_clean_failure(&o, "another model family");
}

#[test]
fn bench_commands_print_their_tables() {
    let model = fixture("sd1/sd1-tiny.safetensors");
    for stage in ["text", "unet", "vae", "pipeline"] {
        let o = bin()
            .args(["bench", stage, "--config"])
            .arg(&model)
            .args(["--width", "64", "--height", "64", "--iters", "1", "--steps", "4", "--json"])
            .output()
            .expect("run");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
        assert_eq!(v["stage"], stage);
        assert!(v["median_s"].as_f64().expect("median") > 0.0);
        assert!(v["peak_rss_gib"].as_f64().expect("peak") > 0.0);
        if stage == "pipeline" {
            // 4 steps of DPM++ 2M with guidance: 8 network evaluations, split by stage.
            assert_eq!(v["nfe"], 8);
            let split = &v["split_s"];
            for k in ["text", "unet", "vae", "previews"] {
                assert!(split[k].as_f64().expect("seconds") > 0.0, "{k}: {split}");
            }
        }
    }
    // Tiled on request (a tile is at least the minimum size).
    let o = bin()
        .args(["bench", "vae", "--config"])
        .arg(&model)
        .args(["--width", "128", "--height", "128", "--iters", "1", "--vae-tile", "8", "--json"])
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    assert_eq!(v["vae_tiles"], "24x24 latent");
    let o = bin()
        .args(["bench", "pipeline", "--config", "embedded-nonexistent"])
        .output()
        .expect("run");
    assert!(!o.status.success());
    let o = bin().args(["bench", "oracle", "--json"]).output().expect("run");
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let rows = v.as_array().expect("rows");
    assert!(rows.iter().any(|r| r["solver"] == "unipc"));
}

#[test]
fn make_dataset_writes_images_with_captions_and_never_into_a_used_folder() {
    let dir = scratch("dataset");
    let _ = std::fs::remove_dir_all(&dir);
    let o = bin()
        .args(["make-dataset", "--count", "5", "--size", "32", "--out"])
        .arg(&dir)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let captions = std::fs::read_to_string(dir.join("captions.jsonl")).expect("captions");
    assert_eq!(captions.lines().count(), 5);
    let first: serde_json::Value = serde_json::from_str(captions.lines().next().expect("line")).expect("json");
    let png = dir.join(first["file"].as_str().expect("file"));
    let text = latent_engine::image_io::read_png_parameters(&png)
        .expect("read")
        .expect("caption in the PNG");
    assert_eq!(text, first["caption"].as_str().expect("caption"));
    let before = std::fs::read(&png).expect("png");
    let o = bin()
        .args(["make-dataset", "--count", "5", "--seed", "9", "--out"])
        .arg(&dir)
        .output()
        .expect("run");
    assert_clean_failure(&o, "not empty");
    assert_eq!(std::fs::read(&png).expect("png"), before, "nothing was overwritten");
}

#[test]
fn train_lora_on_a_folder_of_pictures_then_use_it() {
    let dir = scratch("lora-pictures");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    for (i, rgb) in [[200u8, 30, 30], [30, 30, 200]].iter().enumerate() {
        let img = latent_engine::ImageRgb8 {
            width: 80,
            height: 64,
            pixels: rgb.iter().copied().cycle().take(80 * 64 * 3).collect(),
        };
        std::fs::write(
            dir.join(format!("p{i}.png")),
            latent_engine::image_io::encode_png(&img, "").expect("png"),
        )
        .expect("write");
    }
    std::fs::write(dir.join("p0.txt"), "a red square").expect("caption");
    let lora = scratch("my-style.safetensors");
    let _ = std::fs::remove_file(&lora);
    let model = fixture("sd1/sd1-tiny.safetensors");
    let o = bin()
        .args(["train-lora", "--steps", "2", "--batch", "2", "--rank", "2", "--model"])
        .arg(&model)
        .arg("--images")
        .arg(&dir)
        .arg("--out")
        .arg(&lora)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info = bin().arg("lora-info").arg(&lora).output().expect("run");
    assert!(info.status.success(), "{}", String::from_utf8_lossy(&info.stderr));
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(text.contains("rank:        2") && text.contains("unet 48"), "{text}");
    let out = scratch("with-my-style.png");
    let _ = std::fs::remove_file(&out);
    let g = generate(&model, &["--lora", &format!("{}:0.8", lora.display())], &out);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    // An existing LoRA file is never overwritten.
    let again = bin()
        .args(["train-lora", "--steps", "1", "--model"])
        .arg(&model)
        .arg("--out")
        .arg(&lora)
        .output()
        .expect("run");
    assert_clean_failure(&again, "exists");
}

#[test]
fn bench_solvers_measures_distance_from_the_reference_run() {
    let o = bin()
        .args([
            "bench",
            "solvers",
            "--seeds",
            "1",
            "--prompt",
            "a red cat",
            "--nfe",
            "3,8",
            "--reference-steps",
            "8",
        ])
        .args(["--solvers", "dpm++2m,euler", "--json", "--config"])
        .arg(fixture("sd1/sd1-tiny.safetensors"))
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let rmse = |solver: &str, i: usize| {
        v.as_array().expect("rows").iter().find(|r| r["solver"] == solver).expect("row")["points"][i]["rmse"]
            .as_f64()
            .expect("rmse")
    };
    // The reference solver at the reference's own step count is the reference itself.
    assert_eq!(rmse("dpm++2m", 1), 0.0);
    assert!(rmse("dpm++2m", 0) > 0.0 && rmse("euler", 1) > 0.0);
}

#[test]
fn generate_without_a_model_uses_the_embedded_one_or_says_it_is_missing() {
    let out = scratch("embedded-default.png");
    let _ = std::fs::remove_file(&out);
    let o = bin()
        .args(["generate", "--prompt", "a red circle", "--steps", "2", "--out"])
        .arg(&out)
        .output()
        .expect("run");
    if latent_studio::assets::embedded_model().is_some() {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(out.exists());
    } else {
        assert_clean_failure(&o, "no --model given");
        assert!(!out.exists());
    }
}

/// Outputs are checked before the model loads (the model here is garbage: a later check
/// would report that instead), with one line naming the path and the reason, and nothing is
/// left behind.
#[test]
fn outputs_are_checked_before_any_work() {
    let garbage = scratch("garbage-for-out.safetensors");
    std::fs::write(&garbage, vec![0x5au8; 4096]).expect("write");
    let cases: [(&str, Vec<String>, &str); 6] = [
        (
            "missing folder",
            vec!["--out".into(), "/nonexistent-dir/x.png".into()],
            "cannot write /nonexistent-dir/x.png: folder /nonexistent-dir does not exist",
        ),
        (
            "folder is a file",
            vec!["--out".into(), format!("{}/x.png", garbage.display())],
            "is not a folder",
        ),
        (
            "jpeg",
            vec!["--out".into(), scratch("x.jpg").display().to_string()],
            "give a name ending in .png",
        ),
        (
            "no extension",
            vec!["--out".into(), scratch("noext").display().to_string()],
            "give a name ending in .png",
        ),
        (
            "latents folder",
            vec![
                "--out".into(),
                scratch("lat-ok.png").display().to_string(),
                "--latents-out".into(),
                "/nonexistent-dir/l.safetensors".into(),
            ],
            "cannot write /nonexistent-dir/l.safetensors: folder /nonexistent-dir does not exist",
        ),
        (
            "latents exists",
            vec![
                "--out".into(),
                scratch("lat-ok2.png").display().to_string(),
                "--latents-out".into(),
                garbage.display().to_string(),
            ],
            "choose another --latents-out",
        ),
    ];
    for (what, args, needle) in cases {
        let mut c = bin();
        c.args(["generate", "--model"])
            .arg(&garbage)
            .args(["--prompt", "a cat"])
            .args(&args);
        let o = c.output().expect("run");
        assert_clean_failure(&o, needle);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!stderr.contains(".tmp") && !stderr.contains("os error 2): "), "{what}: {stderr}");
    }
    for left in ["lat-ok.png", "lat-ok2.png", "x.jpg", "noext"] {
        assert!(!scratch(left).exists(), "{left} was left behind");
    }
}

/// Size, steps and seed are checked before the model loads (garbage model again), and say
/// which value was wrong.
#[test]
fn numbers_are_checked_before_any_work() {
    let garbage = scratch("garbage-for-numbers.safetensors");
    std::fs::write(&garbage, vec![0x5au8; 4096]).expect("write");
    for (args, needle) in [
        (["--width", "-64"], "'-64' for '--width"),
        (["--height", "100"], "'100' for '--height"),
        (["--steps", "0"], "'0' for '--steps"),
        (["--steps", "5000"], "'5000' for '--steps"),
        (["--seed", "-2"], "'-2' for '--seed"),
    ] {
        let mut c = bin();
        c.args(["generate", "--model"]).arg(&garbage).args(["--prompt", "a cat"]).args(args);
        assert_clean_failure(&c.output().expect("run"), needle);
    }
    // The usage line of a missing --prompt lists only what is required.
    let o = bin().arg("generate").output().expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(stderr.contains("Usage: latent-studio generate --prompt <PROMPT>\n"), "{stderr}");
}

/// `--seed -1` is A1111's "random": the seed chosen is printed and is the one written.
#[test]
fn seed_minus_one_is_random_and_written() {
    let out = scratch("seed-random.png");
    let mut c = bin();
    c.args(["generate", "--model"])
        .arg(fixture("sd1/sd1-tiny.safetensors"))
        .args(["--prompt", "a cat", "--steps", "2", "--seed", "-1", "--out"])
        .arg(&out);
    let o = c.output().expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let printed: u64 = stderr
        .split("seed ")
        .nth(1)
        .and_then(|r| r.split(':').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no seed printed: {stderr}"));
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("read")
        .expect("parameters");
    assert!(text.contains(&format!("Seed: {printed},")), "{printed} vs {text}");
}

/// `info` on a missing file says so once.
#[test]
fn info_on_a_missing_file_says_it_once() {
    let o = bin().args(["info", "/nonexistent/model.safetensors"]).output().expect("run");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_clean_failure(&o, "no such file");
    assert_eq!(stderr.matches("no such file").count(), 1, "{stderr}");
}

#[test]
fn prompt_prints_a1111s_schedule_and_weights() {
    let out = bin()
        .args(["prompt", "--steps", "10", "--json", "a [(dog:1.2):cat:3] BREAK x"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let want = serde_json::json!({"schedule": [
        {"until_step": 3, "text": "a (dog:1.2) BREAK x", "attention": [["a ", 1.0], ["dog", 1.2], ["", 1.0], ["BREAK", -1.0], ["x", 1.0]]},
        {"until_step": 10, "text": "a cat BREAK x", "attention": [["a cat", 1.0], ["BREAK", -1.0], ["x", 1.0]]},
    ]});
    assert_eq!(v, want);
    let human = bin().args(["prompt", "--steps", "4", "[a|b]"]).output().expect("run");
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("calls 0..=1: \"a\"") && text.contains("call 2: \"b\""), "{text}");
    let bad = bin().args(["prompt", "--steps", "0", "a"]).output().expect("run");
    assert!(!bad.status.success());
}

#[test]
fn generate_with_a_vae_file_names_it_in_the_png() {
    let out = scratch("vae.png");
    let vae = fixture("vae/tiny-vae.safetensors");
    let vae = vae.to_str().expect("utf-8 path");
    let run = generate(&fixture("sd1/sd1-tiny.safetensors"), &["--vae", vae], &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("reads")
        .expect("has parameters");
    assert!(text.contains("VAE: tiny-vae.safetensors"), "{text}");
    let bad = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--vae", "/nonexistent/vae.safetensors"],
        &scratch("vae-bad.png"),
    );
    assert_clean_failure(&bad, "vae.safetensors");
}

#[test]
fn generate_with_an_embedding_folder_writes_ti_hashes() {
    let out = scratch("ti.png");
    let dir = fixture("embeddings");
    let dir = dir.to_str().expect("utf-8 path");
    let mut c = bin();
    c.args(["generate", "--model"])
        .arg(fixture("sd1/sd1-tiny.safetensors"))
        .args([
            "--prompt",
            "a tinystyle cat",
            "--seed",
            "1",
            "--steps",
            "3",
            "--embeddings",
            dir,
            "--out",
        ])
        .arg(&out);
    let run = c.output().expect("run");
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("reads")
        .expect("has parameters");
    assert!(text.contains("TI hashes: \"tinystyle: "), "{text}");
    let bad = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--embeddings", "/nonexistent-embeddings"],
        &scratch("ti-bad.png"),
    );
    assert_clean_failure(&bad, "nonexistent-embeddings");
}

#[test]
fn decode_writes_the_latents_with_each_decoder() {
    let png = scratch("dec-src.png");
    let lat = scratch("dec-src.safetensors");
    let lat_s = lat.to_str().expect("utf-8 path").to_string();
    let run = generate(&fixture("sd1/sd1-tiny.safetensors"), &["--latents-out", &lat_s], &png);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    for (name, extra) in [
        ("dec-vae.png", vec![]),
        (
            "dec-other-vae.png",
            vec!["--vae".to_string(), fixture("vae/diffusers").display().to_string()],
        ),
        (
            "dec-tiny.png",
            vec![
                "--tiny".to_string(),
                fixture("taesd/taesd_decoder.safetensors").display().to_string(),
            ],
        ),
    ] {
        let out = scratch(name);
        let r = bin()
            .args(["decode", "--model"])
            .arg(fixture("sd1/sd1-tiny.safetensors"))
            .args(["--latents", &lat_s, "--out"])
            .arg(&out)
            .args(&extra)
            .output()
            .expect("run");
        assert!(r.status.success(), "{name}: {}", String::from_utf8_lossy(&r.stderr));
        let img = image::open(&out).expect("png");
        assert!(img.width() >= 16, "{name}");
    }
    // The tiny decoder upsamples by 8 whatever the model's VAE does.
    let tiny = image::open(scratch_existing("dec-tiny.png")).expect("png");
    let bytes = std::fs::read(&lat).expect("latents");
    let n = u64::from_le_bytes(bytes[..8].try_into().expect("header length")) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).expect("header");
    let shape: Vec<u64> = header["latents"]["shape"]
        .as_array()
        .expect("shape")
        .iter()
        .filter_map(|v| v.as_u64())
        .collect();
    assert_eq!((u64::from(tiny.width()), u64::from(tiny.height())), (shape[3] * 8, shape[2] * 8));
    let bad = bin()
        .args(["decode", "--model"])
        .arg(fixture("sd1/sd1-tiny.safetensors"))
        .args(["--latents", "/nonexistent.safetensors", "--out"])
        .arg(scratch("dec-bad.png"))
        .output()
        .expect("run");
    assert_clean_failure(&bad, "nonexistent.safetensors");
}

fn scratch_existing(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("latent-cli-{}", std::process::id())).join(name)
}

#[test]
fn generate_from_an_init_image_takes_its_size_and_writes_the_strength() {
    let out = scratch("img2img.png");
    let init = fixture("img2img/init.png");
    let init = init.to_str().expect("utf-8 path");
    let run = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--init-image", init, "--strength", "0.5"],
        &out,
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("reads")
        .expect("has parameters");
    assert!(text.contains("Denoising strength: 0.5") && text.contains("Size: 64x64"), "{text}");
    // Another size: fitted by the resize mode.
    let out2 = scratch("img2img-crop.png");
    let run = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--init-image", init, "--width", "96", "--height", "64", "--resize-mode", "crop"],
        &out2,
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(image::open(&out2).expect("png").width(), 96);
    let bad = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--init-image", init, "--strength", "2"],
        &scratch("img2img-bad.png"),
    );
    assert_clean_failure(&bad, "strength");
    let broken = scratch("broken.png");
    std::fs::write(&broken, b"not a png").expect("write");
    let bad = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--init-image", broken.to_str().expect("utf-8")],
        &scratch("img2img-broken.png"),
    );
    assert_clean_failure(&bad, "init image");
}

#[test]
fn inpaint_with_a_mask_runs_and_an_empty_mask_is_refused() {
    let out = scratch("inpaint.png");
    let (init, mask) = (fixture("img2img/init.png"), fixture("img2img/mask.png"));
    let args = [
        "--init-image",
        init.to_str().expect("utf-8"),
        "--mask",
        mask.to_str().expect("utf-8"),
        "--strength",
        "1",
    ];
    let run = generate(&fixture("sd1/sd1-tiny.safetensors"), &args, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let black = scratch("black-mask.png");
    image::RgbImage::new(64, 64).save(&black).expect("save");
    let args = [
        "--init-image",
        init.to_str().expect("utf-8"),
        "--mask",
        black.to_str().expect("utf-8"),
    ];
    let bad = generate(&fixture("sd1/sd1-tiny.safetensors"), &args, &scratch("inpaint-bad.png"));
    assert_clean_failure(&bad, "mask is empty");
}

/// "Only masked" from the command line: a 128x96 picture keeps its size, the repair runs at
/// the model's 64x64, the mask box and padding are written; masked content `fill` too.
#[test]
fn only_masked_inpaint_keeps_the_picture_size() {
    let (picture, mask) = (scratch("om-picture.png"), scratch("om-mask.png"));
    image::RgbImage::from_fn(128, 96, |x, y| image::Rgb([(x * 2) as u8, (y * 2) as u8, 90]))
        .save(&picture)
        .expect("save");
    image::RgbImage::from_fn(128, 96, |x, y| {
        image::Rgb(if (80..100).contains(&x) && (20..40).contains(&y) {
            [255; 3]
        } else {
            [0; 3]
        })
    })
    .save(&mask)
    .expect("save");
    let out = scratch("only-masked.png");
    let args = [
        "--init-image",
        picture.to_str().expect("utf-8"),
        "--mask",
        mask.to_str().expect("utf-8"),
        "--inpaint-area",
        "masked",
        "--padding",
        "12",
        "--masked-content",
        "fill",
        "--strength",
        "0.9",
    ];
    let run = generate(&fixture("sd1/sd1-tiny.safetensors"), &args, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let img = image::open(&out).expect("png").to_rgb8();
    assert_eq!(img.dimensions(), (128, 96));
    let before = image::open(&picture).expect("png").to_rgb8();
    assert_eq!(img.get_pixel(5, 90), before.get_pixel(5, 90), "far from the mask nothing moved");
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("reads")
        .expect("has parameters");
    assert!(
        text.contains("Size: 64x64")
            && text.contains("Masked content: fill")
            && text.contains("Inpaint area: Only masked, Masked area padding: 12"),
        "{text}"
    );
    // A mask of another size is refused before any work.
    let small = scratch("om-small-mask.png");
    image::RgbImage::from_pixel(64, 64, image::Rgb([255; 3]))
        .save(&small)
        .expect("save");
    let bad = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &[
            "--init-image",
            picture.to_str().expect("utf-8"),
            "--mask",
            small.to_str().expect("utf-8"),
            "--inpaint-area",
            "masked",
        ],
        &scratch("only-masked-bad.png"),
    );
    assert_clean_failure(&bad, "same size");
}

#[test]
fn outpaint_extends_the_picture() {
    let out = scratch("outpaint.png");
    let init = fixture("img2img/init.png");
    let args = [
        "--init-image",
        init.to_str().expect("utf-8"),
        "--outpaint",
        "16,0,16,8",
        "--strength",
        "1",
    ];
    let run = generate(&fixture("sd1/sd1-tiny.safetensors"), &args, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let img = image::open(&out).expect("png").to_rgb8();
    assert_eq!((img.width(), img.height()), (96, 72));
    // The picture is kept exactly beyond the mask blur's reach of the new border (kernel
    // radius 10 for the default blur 4), placed 16 pixels in; the border is painted anew
    // (not the stretched edge pixels it started as).
    let src = image::open(&init).expect("init").to_rgb8();
    for y in 0..64 - 12 {
        for x in 12..64 - 12 {
            assert_eq!(img.get_pixel(x + 16, y), src.get_pixel(x, y), "kept pixel {x},{y}");
        }
    }
    let stretched = (0..72).filter(|&y| img.get_pixel(0, y) == src.get_pixel(0, y.min(63))).count();
    assert!(stretched < 36, "the left border was repainted ({stretched} of 72 rows unchanged)");
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("reads")
        .expect("has parameters");
    assert!(text.contains("Size: 96x72") && text.contains("Mask blur: 4"), "{text}");
    let bad = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--init-image", init.to_str().expect("utf-8"), "--outpaint", "16,0"],
        &scratch("outpaint-bad.png"),
    );
    assert_clean_failure(&bad, "LEFT,TOP,RIGHT,BOTTOM");
}

#[test]
fn hires_fix_from_the_command_line() {
    let out = scratch("hires.png");
    let run = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--hires-scale", "1.5", "--hires-steps", "4", "--hires-strength", "0.5"],
        &out,
    );
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(image::open(&out).expect("png").width(), 96);
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("reads")
        .expect("has parameters");
    assert!(text.contains("Hires upscale: 1.5") && text.contains("Hires steps: 4"), "{text}");
    let bad = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--hires-scale", "9"],
        &scratch("hires-bad.png"),
    );
    assert_clean_failure(&bad, "upscale");
    // Pixel upscalers: Lanczos, and an ESRGAN file named by its path (written by its stem).
    let esrgan = fixture("upscale/esrgan-x2.safetensors");
    for (how, written) in [("lanczos", "Lanczos"), (esrgan.to_str().expect("utf-8"), "esrgan-x2")] {
        let out = scratch(&format!("hires-{written}.png"));
        let run = generate(
            &fixture("sd1/sd1-tiny.safetensors"),
            &["--hires-scale", "2", "--hires-strength", "0.7", "--hires-upscaler", how],
            &out,
        );
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert_eq!(image::open(&out).expect("png").width(), 128);
        let text = latent_engine::image_io::read_png_parameters(&out)
            .expect("reads")
            .expect("has parameters");
        assert!(text.contains(&format!("Hires upscaler: {written}")), "{text}");
    }
    let bad = generate(
        &fixture("sd1/sd1-tiny.safetensors"),
        &["--hires-scale", "2", "--hires-upscaler", "4x-NoSuchFile"],
        &scratch("hires-bad-upscaler.png"),
    );
    assert_clean_failure(&bad, "unknown hires upscaler");
}

#[test]
fn upscale_enlarges_a_picture_and_refuses_pickle() {
    let out = scratch("upscaled.png");
    let r = bin()
        .args(["upscale", "--model"])
        .arg(fixture("upscale/esrgan-x4.safetensors"))
        .arg(fixture("img2img/init.png"))
        .args(["--tile", "32", "--out"])
        .arg(&out)
        .output()
        .expect("run");
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(image::open(&out).expect("png").width(), 256);
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("reads")
        .expect("has parameters");
    assert!(
        text.contains("Postprocess upscale by: 4, Postprocess upscaler: esrgan-x4"),
        "{text}"
    );
    let pth = scratch("model.pth");
    std::fs::write(&pth, [0x80u8, 0x02, b'}', b'q', 0x00]).expect("write");
    let bad = bin()
        .args(["upscale", "--model"])
        .arg(&pth)
        .arg(fixture("img2img/init.png"))
        .args(["--out"])
        .arg(scratch("up-bad.png"))
        .output()
        .expect("run");
    assert_clean_failure(&bad, "pickle");
}

#[test]
fn the_init_picture_and_mask_are_kept_beside_the_image() {
    let out = scratch("kept.png");
    for kind in ["init", "mask"] {
        let _ = std::fs::remove_file(latent_engine::image_io::sidecar(&out, kind));
    }
    let files = [fixture("img2img/init.png"), fixture("img2img/mask.png")].map(|p| p.display().to_string());
    let args = ["--init-image", files[0].as_str(), "--mask", files[1].as_str()];
    let run = generate(&fixture("sd1/sd1-tiny.safetensors"), &args, &out);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let kept = latent_engine::image_io::sidecar(&out, "init");
    assert!(kept.is_file() && latent_engine::image_io::sidecar(&out, "mask").is_file());
    assert_eq!(image::open(&kept).expect("png").width(), 64);
    // A name already taken beside the output is refused before any work.
    let other = scratch("kept2.png");
    std::fs::write(latent_engine::image_io::sidecar(&other, "init"), b"mine").expect("write");
    let bad = generate(&fixture("sd1/sd1-tiny.safetensors"), &args, &other);
    assert_clean_failure(&bad, "already exists");
    assert_eq!(
        std::fs::read(latent_engine::image_io::sidecar(&other, "init")).expect("read"),
        b"mine"
    );
}

#[test]
fn an_nfe_budget_picks_the_steps_and_one_too_small_is_refused() {
    let out = scratch("budget.png");
    let model = fixture("sd1/sd1-tiny.safetensors");
    let o = generate(&model, &["--nfe", "12", "--cfg", "3", "--solver", "heun"], &out);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    // Heun with CFG: (2 x 3 - 1) x 2 = 10 evaluations for 3 steps; 4 steps would be 14.
    assert!(stderr.contains("NFE budget 12: 3 steps of heun (10 NFE"), "{stderr}");
    let text = latent_engine::image_io::read_png_parameters(&out)
        .expect("reads")
        .expect("parameters");
    assert!(text.contains("Steps: 3,") && text.contains("NFE: 10"), "{text}");
    let small = scratch("budget-small.png");
    let o = generate(&model, &["--nfe", "1", "--cfg", "3"], &small);
    assert_clean_failure(&o, "buys no step");
    assert!(!small.exists());
}

#[test]
fn compare_writes_the_grid_csv_plot_and_cells_and_never_overwrites() {
    let dir = std::env::temp_dir().join(format!("latent-compare-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |dir: &Path| {
        bin()
            .args(["compare", "--model"])
            .arg(fixture("sd1/sd1-tiny.safetensors"))
            .args([
                "--prompt",
                "a cat",
                "--cfg",
                "3",
                "--solvers",
                "euler,heun",
                "--nfe",
                "1,8",
                "--reference",
                "euler:20",
                "--out",
            ])
            .arg(dir)
            .output()
            .expect("run")
    };
    let o = run(&dir);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let csv = std::fs::read_to_string(dir.join("compare.csv")).expect("csv");
    let rows: Vec<Vec<&str>> = csv.lines().skip(1).map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 4, "{csv}");
    // solver, budget, steps, spent: euler 4 steps = 8 NFE; heun 2 steps = 6 (3 would be 10).
    let row = |s: &str, b: &str| rows.iter().find(|r| r[0] == s && r[1] == b).expect("row").clone();
    assert_eq!(&row("euler", "8")[2..4], ["4", "8"]);
    assert_eq!(&row("heun", "8")[2..4], ["2", "6"]);
    assert_eq!(&row("euler", "1")[2..4], ["0", "0"], "a budget of 1 buys no step with CFG");
    let d: f64 = row("euler", "8")[5].parse().expect("distance");
    assert!(d > 0.0 && d.is_finite());
    for f in [
        "grid.png",
        "convergence.svg",
        "convergence.png",
        "cells/euler_nfe8.png",
        "cells/heun_nfe8.png",
        "cells/reference.png",
    ] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    let cell = latent_engine::image_io::read_png_parameters(&dir.join("cells/heun_nfe8.png"))
        .expect("reads")
        .expect("text");
    assert!(cell.contains("Steps: 2,") && cell.contains("Sampler: Heun"), "{cell}");
    assert!(
        std::fs::read_to_string(dir.join("convergence.svg"))
            .expect("svg")
            .contains("<polyline")
    );
    // The folder is not empty now: a second run refuses and leaves it as it is.
    let before = std::fs::read(dir.join("grid.png")).expect("grid");
    assert_clean_failure(&run(&dir), "not an empty folder");
    assert_eq!(std::fs::read(dir.join("grid.png")).expect("grid"), before);
}

#[test]
fn quantize_writes_a_gguf_the_studio_generates_with_and_refuses_bad_input() {
    let out = scratch("tiny-q8.gguf");
    let o = bin()
        .args(["quantize", "--type", "q8_0"])
        .arg(fixture("sd1/sd1-tiny.safetensors"))
        .arg(&out)
        .output()
        .expect("run");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stdout).contains("of them q8_0"));
    let png = scratch("from-gguf.png");
    let g = generate(&out, &[], &png);
    assert!(g.status.success(), "{}", String::from_utf8_lossy(&g.stderr));
    let text = latent_engine::image_io::read_png_parameters(&png).expect("reads").expect("text");
    assert!(text.contains("Model quantization: q8_0"), "{text}");
    let info = bin().arg("info").arg(&out).output().expect("run");
    assert!(String::from_utf8_lossy(&info.stdout).contains("q8_0"));
    // Again onto the same file: refused, the file untouched.
    let before = std::fs::read(&out).expect("file");
    let again = bin()
        .args(["quantize", "--type", "q8_0"])
        .arg(fixture("sd1/sd1-tiny.safetensors"))
        .arg(&out)
        .output()
        .expect("run");
    assert_clean_failure(&again, "never overwrites");
    assert_eq!(std::fs::read(&out).expect("file"), before);
    let bad = bin()
        .args(["quantize", "--type", "q3_X"])
        .arg(fixture("sd1/sd1-tiny.safetensors"))
        .arg(scratch("x.gguf"))
        .output()
        .expect("run");
    assert_clean_failure(&bad, "is not one of");
    // A truncated GGUF: one clear line.
    let cut = scratch("cut.gguf");
    std::fs::write(&cut, &before[..before.len() / 3]).expect("write");
    assert_clean_failure(&generate(&cut, &[], &scratch("cut.png")), "truncated");
}

#[test]
fn info_device_names_the_kernel_set_chosen_at_run_time() {
    let o = bin().args(["info", "--device"]).output().expect("run");
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    let line = text.lines().find(|l| l.starts_with("cpu kernels:")).expect("a kernel line");
    #[cfg(target_arch = "x86_64")]
    {
        let avx512 = ["avx512f", "avx512bw", "avx512vl", "avx512dq"].iter().all(|f| match *f {
            "avx512f" => std::arch::is_x86_feature_detected!("avx512f"),
            "avx512bw" => std::arch::is_x86_feature_detected!("avx512bw"),
            "avx512vl" => std::arch::is_x86_feature_detected!("avx512vl"),
            _ => std::arch::is_x86_feature_detected!("avx512dq"),
        });
        assert_eq!(line.contains("AVX-512"), avx512, "{line}");
        // The engine's own kernels can be capped for the whole process.
        let capped = bin()
            .args(["info", "--device"])
            .env("LATENT_STUDIO_SIMD", "portable")
            .output()
            .expect("run");
        let capped = String::from_utf8_lossy(&capped.stdout);
        assert!(capped.contains("portable"), "{capped}");
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            assert!(capped.contains("portable (capped by LATENT_STUDIO_SIMD) for attention"), "{capped}");
        }
    }
    assert!(text.contains("threads:"), "{text}");
}

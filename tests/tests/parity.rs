//! Numerical parity with diffusers on the tiny SD1/SD2/SDXL fixtures, both layouts.
//! Tolerance: relative L2 error below 1e-4 in f32 (README states what is reached).

use candle_core::{DType, Tensor};
use latent_engine::nets::unet::UnetInput;
use latent_engine::pipeline::Pipeline;
use latent_engine::protocol::{GenerateRequest, ModelSpec};
use latent_engine::rng::TorchRng;
use latent_engine::tokenizer::ClipTokenizer;
use latent_tests::{FAMILIES, Quiet, layouts, reference, reference_json, rel_l2};

const TOL: f64 = 1e-4;

fn report(what: &str, err: f64) {
    println!("{what}: rel L2 {err:.2e}");
    assert!(err < TOL, "{what}: relative L2 error {err:.3e} >= {TOL:e}");
}

#[test]
fn tokenizer_matches_transformers() {
    let tok = ClipTokenizer::shared().expect("tokenizer");
    for family in FAMILIES {
        let r = reference(family);
        let j = reference_json(family);
        let pad = if family == "sd2" { 0 } else { 49407 };
        for (i, prompt) in j["token_prompts"].as_object().expect("prompts") {
            let mut want: Vec<i64> = r[&format!("tokens.{i}")].to_vec1().expect("ids");
            if pad == 0 {
                // transformers registers "!" as the pad token of OpenCLIP-style tokenizers and then
                // splits a literal "!" in the prompt to id 0; OpenCLIP's own tokenizer (which SD 2.x
                // was trained with) gives "!</w>" = 256, and so do we.
                let end = want.iter().position(|&t| t == 49407).unwrap_or(want.len());
                for t in &mut want[1..end] {
                    if *t == 0 {
                        *t = 256;
                    }
                }
            }
            let got: Vec<i64> = tok.windows(prompt.as_str().expect("str"), pad)[0]
                .iter()
                .map(|&x| x as i64)
                .collect();
            assert_eq!(got, want, "{family}: '{prompt}'");
        }
    }
}

#[test]
fn initial_noise_matches_torch_cpu_generator() {
    let r = reference("sd1");
    let want = &r["noise"];
    let mut rng = TorchRng::new(1);
    let got = Tensor::from_vec(rng.randn_f32(want.elem_count()), want.dims(), &candle_core::Device::Cpu).expect("tensor");
    let max = (got - want)
        .expect("sub")
        .abs()
        .expect("abs")
        .flatten_all()
        .expect("flat")
        .max(0)
        .expect("max")
        .to_scalar::<f32>()
        .expect("scalar");
    assert!(max < 1e-5, "max abs difference {max}");
}

fn check_family(family: &str) {
    let r = reference(family);
    let j = reference_json(family);
    let prompt = j["prompt"].as_str().expect("prompt");
    let negative = j["negative"].as_str().expect("negative");
    for (layout, path) in layouts(family) {
        let what = |s: &str| format!("{family}/{layout}/{s}");
        let pipe = Pipeline::load(&ModelSpec::new(&path)).unwrap_or_else(|e| panic!("{}: {e}", what("load")));

        let (context, pooled) = pipe.encode_prompt(prompt, negative, 1, true).expect("encode");
        report(
            &what("text uncond"),
            rel_l2(&context.get(0).expect("row"), &r["text.uncond"].get(0).expect("row")),
        );
        report(
            &what("text cond"),
            rel_l2(&context.get(1).expect("row"), &r["text.cond"].get(0).expect("row")),
        );
        if family == "sdxl" {
            let pooled = pooled.expect("SDXL has pooled embeddings");
            report(
                &what("pooled uncond"),
                rel_l2(&pooled.get(0).expect("row"), &r["text.pooled_uncond"].get(0).expect("row")),
            );
            report(
                &what("pooled cond"),
                rel_l2(&pooled.get(1).expect("row"), &r["text.pooled_cond"].get(0).expect("row")),
            );
        }

        let (skip2, _) = pipe.encode_prompt(prompt, "", 2, false).expect("encode");
        report(
            &what("text cond, clip skip 2"),
            rel_l2(&skip2.get(0).expect("row"), &r["text.cond_clip_skip2"].get(0).expect("row")),
        );

        let x = &r["unet.input"];
        let cond = r["text.cond"].clone();
        let size = j["size"].as_f64().expect("size") as f32;
        let ids = Tensor::from_vec(vec![size, size, 0.0, 0.0, size, size], (1, 6), x.device()).expect("ids");
        let pooled_cond = r.get("text.pooled_cond").cloned();
        let added = pooled_cond.as_ref().map(|p| (p, &ids));
        let out = pipe
            .unet()
            .forward(&UnetInput {
                sample: x,
                timesteps: &[500.0],
                context: &cond,
                added,
                token_merge: 0.0,
            })
            .expect("unet");
        report(&what("unet"), rel_l2(&out, &r["unet.output"]));

        let img = pipe.vae().decode(x).expect("vae");
        report(&what("vae"), rel_l2(&img, &r["vae.output"]));

        for solver in ["ddim", "euler"] {
            let req = GenerateRequest {
                prompt: prompt.into(),
                negative: negative.into(),
                width: 64,
                height: 64,
                steps: j["steps"].as_u64().expect("steps") as u32,
                cfg_scale: j["guidance"].as_f64().expect("guidance"),
                seed: j["seed"].as_u64().expect("seed"),
                solver: solver.into(),
                clip_skip: 1,
                preview_every: 0,
                ..Default::default()
            };
            let job = pipe.validate(&req).expect("valid request");
            let out = pipe.generate(&job, &mut Quiet).expect("generate");
            let lat = Tensor::from_vec(out.latents.data.clone(), out.latents.shape.clone(), x.device()).expect("latents");
            report(
                &what(&format!("{solver} 10-step latents")),
                rel_l2(&lat, &r[&format!("run.{solver}.latents")]),
            );
            // Images: diffusers' float image in [0, 1], ours rounded to 8 bits.
            let want: Vec<f32> = r[&format!("run.{solver}.image")]
                .flatten_all()
                .expect("flat")
                .to_vec1()
                .expect("vec");
            let worst = out
                .image
                .pixels
                .iter()
                .zip(&want)
                .map(|(a, b)| (*a as f32 - b * 255.0).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1.0, "{}: image differs by {worst} levels", what(solver));
            assert_eq!(out.timings.nfe, 20, "10 steps with CFG are 20 evaluations");
        }
        // More solvers (stochastic ones included: their noise continues the seed's stream as
        // in diffusers), and guidance rescale.
        for (name, solver, schedule, steps, rescale) in [
            ("euler-a", "euler-a", "default", 10, 0.0),
            ("dpm++2m-karras", "dpm++2m", "karras", 10, 0.0),
            ("unipc", "unipc", "default", 10, 0.0),
            ("lcm", "lcm", "default", 4, 0.0),
            ("ddim-rescale", "ddim", "default", 10, 0.7),
        ] {
            let req = GenerateRequest {
                prompt: prompt.into(),
                negative: negative.into(),
                width: 64,
                height: 64,
                steps,
                cfg_scale: j["guidance"].as_f64().expect("guidance"),
                seed: j["seed"].as_u64().expect("seed"),
                solver: solver.into(),
                schedule: schedule.into(),
                cfg_rescale: rescale,
                preview_every: 0,
                ..Default::default()
            };
            let out = pipe.generate(&pipe.validate(&req).expect("valid"), &mut Quiet).expect("generate");
            let lat = Tensor::from_vec(out.latents.data.clone(), out.latents.shape.clone(), x.device()).expect("latents");
            report(&what(&format!("{name} latents")), rel_l2(&lat, &r[&format!("run.{name}.latents")]));
        }
        let _ = DType::F32;
    }
}

#[test]
fn sd1_matches_diffusers() {
    check_family("sd1");
}

#[test]
fn sd2_matches_diffusers() {
    check_family("sd2");
}

#[test]
fn sdxl_matches_diffusers() {
    check_family("sdxl");
}

/// Half-precision weights and compute: the run completes, stays finite and stays near f32.
/// bf16 on the CPU runs twice where the machine allows: with the AVX-512 BF16 kernels (AMX
/// tiles where the CPU has them; bf16 matrices, f32 activations) and forced down to AVX2, where the weights keep bf16's
/// rounding and compute in f32.
#[test]
fn half_precision_runs_stay_close_to_f32() {
    use latent_engine::kernels::simd::{Level, force};
    use latent_engine::protocol::DType as D;
    let r = reference("sd1");
    let path = &layouts("sd1")[0].1;
    let run = |dtype: D| {
        let pipe = Pipeline::load(&ModelSpec {
            dtype,
            ..ModelSpec::new(path)
        })
        .expect("load");
        let req = GenerateRequest {
            prompt: "a red cat".into(),
            negative: "blue".into(),
            width: 64,
            height: 64,
            steps: 10,
            cfg_scale: 3.0,
            seed: 1,
            solver: "ddim".into(),
            clip_skip: 1,
            preview_every: 0,
            ..Default::default()
        };
        let out = pipe.generate(&pipe.validate(&req).expect("valid"), &mut Quiet).expect("generate");
        let lat = Tensor::from_vec(out.latents.data, out.latents.shape, &candle_core::Device::Cpu).expect("latents");
        (rel_l2(&lat, &r["run.ddim.latents"]), pipe.cpu_bf16_matrices())
    };
    let (err, _) = run(D::F16);
    println!("F16: rel L2 vs diffusers f32 {err:.2e}");
    assert!(err < 1e-3, "F16: {err}");
    let hardware = latent_engine::kernels::cpu_bf16::hardware();
    let (err, matrices) = run(D::BF16);
    println!(
        "BF16 ({}): rel L2 vs diffusers f32 {err:.2e}",
        if latent_engine::kernels::cpu_bf16::amx() {
            "AMX tiles"
        } else if hardware {
            "AVX-512 BF16 kernels"
        } else {
            "f32 compute"
        }
    );
    assert!(err < 5e-3, "BF16: {err}");
    assert_eq!(
        matrices > 0,
        hardware,
        "bf16 matrices are kept exactly where the CPU multiplies them"
    );
    if hardware {
        let (err, matrices) = force(Level::Avx2, || run(D::BF16)).expect("an AVX-512 CPU has AVX2");
        println!("BF16 forced to AVX2 (f32 compute): rel L2 vs diffusers f32 {err:.2e}");
        assert!(err < 5e-3, "BF16 at AVX2: {err}");
        assert_eq!(matrices, 0);
    }
}

/// CFG truncation: after the chosen fraction only the conditional pass runs. `cfg_until = 0`
/// is exactly guidance off; 0.5 of 10 steps costs 5 x 2 + 5 x 1 evaluations, as planned.
#[test]
fn cfg_truncation_spends_what_it_plans() {
    let pipe = Pipeline::load(&ModelSpec::new(&layouts("sd1")[0].1)).expect("load");
    let run = |cfg: f64, until: f64| {
        let req = GenerateRequest {
            prompt: "a red cat".into(),
            negative: "blue".into(),
            width: 64,
            height: 64,
            steps: 10,
            cfg_scale: cfg,
            cfg_until: until,
            seed: 3,
            solver: "dpm++2m".into(),
            preview_every: 0,
            ..Default::default()
        };
        let job = pipe.validate(&req).expect("valid");
        let planned = pipe.nfe(&job);
        let out = pipe.generate(&job, &mut Quiet).expect("generate");
        assert_eq!(out.timings.nfe, planned, "planned and spent NFE agree");
        out
    };
    let off = run(1.0, 1.0);
    let truncated_at_start = run(3.0, 0.0);
    assert_eq!(off.timings.nfe, 10);
    assert_eq!(truncated_at_start.image, off.image);
    let half = run(3.0, 0.5);
    assert_eq!(half.timings.nfe, 15);
    let full = run(3.0, 1.0);
    assert_eq!(full.timings.nfe, 20);
    assert_ne!(half.image, full.image);
}

/// Every solver with its default schedule, and every schedule with two solvers, run through
/// the real pipeline: finite output, and the network evaluations spent are the ones planned.
#[test]
fn every_solver_and_schedule_runs_in_the_pipeline() {
    use latent_engine::sampling::SOLVERS;
    use latent_engine::sampling::schedule::SCHEDULES;
    let pipe = Pipeline::load(&ModelSpec::new(&layouts("sd1")[0].1)).expect("load");
    let mut combos: Vec<(&str, &str)> = SOLVERS.iter().map(|s| (s.name, "default")).collect();
    for (schedule, _) in SCHEDULES {
        combos.push(("euler", schedule));
        combos.push(("dpm++2m", schedule));
    }
    for (solver, schedule) in combos {
        let req = GenerateRequest {
            prompt: "a red cat".into(),
            width: 64,
            height: 64,
            steps: 3,
            cfg_scale: 1.0,
            seed: 5,
            solver: solver.into(),
            schedule: schedule.into(),
            preview_every: 0,
            ..Default::default()
        };
        let job = pipe.validate(&req).unwrap_or_else(|e| panic!("{solver}/{schedule}: {e}"));
        let out = pipe
            .generate(&job, &mut Quiet)
            .unwrap_or_else(|e| panic!("{solver}/{schedule}: {e}"));
        assert!(out.latents.data.iter().all(|v| v.is_finite()), "{solver}/{schedule}");
        assert_eq!(out.timings.nfe, pipe.nfe(&job), "{solver}/{schedule}");
    }
}

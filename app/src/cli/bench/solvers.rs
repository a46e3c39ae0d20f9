//! `bench solvers`: every solver's image distance from a long reference run at equal NFE.

use std::path::PathBuf;

use anyhow::Result;
use latent_engine::image_io::{encode_png, write_new_file};
use latent_engine::sampling::oracle::steps_for_nfe;
use latent_engine::sampling::{SOLVERS, evaluations};

use super::stage::EveryPreview;
use crate::plot::{Series, log_log};

/// Options of `bench solvers`.
pub struct SolversArgs {
    pub config: String,
    pub prompts: Vec<String>,
    pub seeds: u64,
    pub nfes: Vec<u32>,
    pub reference_steps: u32,
    pub schedule: String,
    pub cfg: f64,
    pub solvers: Option<Vec<String>>,
    pub plot: Option<PathBuf>,
    pub json: bool,
}

/// One row of `bench solvers`: solver, stochastic?, per budget (evaluations spent, distance).
type SolverRow = (String, bool, Vec<(u32, f64)>);

/// The prompts `bench solvers` averages over by default (from the embedded model's vocabulary:
/// its shapes are drawn on black or white backgrounds, its objects on any colour).
pub const SOLVER_PROMPTS: [&str; 4] = [
    "a red circle on a white background",
    "a happy face on a green background",
    "a small yellow star in the top left on a black background",
    "a house on a pink background",
];

/// Image distance of every solver at each NFE budget from a long reference run (DPM-Solver++
/// 2M at `reference_steps` on the same schedule) from the same seed: root mean square over
/// RGB in [0, 1], averaged over prompts and seeds. Budgets count the solver's network
/// evaluations per image (CFG's second pass not counted: it doubles every column alike).
pub fn solvers(a: SolversArgs) -> Result<()> {
    use latent_engine::GenerateRequest;
    use latent_engine::pipeline::Pipeline;
    let path = match a.config.as_str() {
        "embedded" => crate::assets::embedded_model()
            .ok_or_else(|| anyhow::anyhow!("this build has no embedded model yet; give a checkpoint path"))?,
        p => PathBuf::from(p),
    };
    let pipe = Pipeline::load(&latent_engine::ModelSpec::new(&path))?;
    let (w, h) = pipe.config.default_size;
    let run = |solver: &str, steps: u32, prompt: &str, seed: u64| -> Result<Vec<f32>> {
        let req = GenerateRequest {
            prompt: prompt.to_string(),
            width: w,
            height: h,
            steps,
            cfg_scale: a.cfg,
            seed,
            solver: solver.to_string(),
            schedule: a.schedule.clone(),
            preview_every: 0,
            ..Default::default()
        };
        let out = pipe.generate(&pipe.validate(&req)?, &mut EveryPreview)?;
        Ok(out.image.pixels.iter().map(|v| f32::from(*v) / 255.0).collect())
    };
    let chosen: Vec<&latent_engine::sampling::SolverInfo> = SOLVERS
        .iter()
        .filter(|s| a.solvers.as_ref().is_none_or(|list| list.iter().any(|n| n == s.name)))
        .collect();
    // (solver, per budget: (evaluations spent, sum of distances)).
    let mut table: Vec<SolverRow> = chosen
        .iter()
        .map(|s| (s.name.to_string(), s.stochastic, a.nfes.iter().map(|_| (0u32, 0f64)).collect()))
        .collect();
    let mut pairs = 0u64;
    for prompt in &a.prompts {
        for seed in 1..=a.seeds {
            let reference = run("dpm++2m", a.reference_steps, prompt, seed)?;
            eprintln!("reference for \"{prompt}\", seed {seed} done");
            for (row, info) in table.iter_mut().zip(&chosen) {
                for (cell, &nfe) in row.2.iter_mut().zip(&a.nfes) {
                    let steps = steps_for_nfe(info, nfe);
                    let img = run(info.name, steps, prompt, seed)?;
                    let mse = img.iter().zip(&reference).map(|(x, y)| f64::from(x - y).powi(2)).sum::<f64>() / img.len() as f64;
                    *cell = (evaluations(info, steps), cell.1 + mse.sqrt());
                }
            }
            pairs += 1;
        }
    }
    let rows: Vec<SolverRow> = table
        .into_iter()
        .map(|(n, st, cells)| {
            (
                n,
                st,
                cells.into_iter().map(|(spent, sum)| (spent, sum / pairs.max(1) as f64)).collect(),
            )
        })
        .collect();
    if a.json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(n, st, cells)| {
                serde_json::json!({"solver": n, "stochastic": st, "points": cells.iter().zip(&a.nfes)
                    .map(|((spent, d), budget)| serde_json::json!({"nfe": budget, "spent": spent, "rmse": d})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        println!(
            "RMSE (RGB in [0, 1]) from a {}-step DPM++ 2M reference, {} schedule, CFG {}, {} prompts x {} seeds, {}x{}",
            a.reference_steps,
            a.schedule,
            a.cfg,
            a.prompts.len(),
            a.seeds,
            w,
            h
        );
        print!("| solver |");
        for n in &a.nfes {
            print!(" NFE {n} |");
        }
        println!();
        println!("|---|{}", "---|".repeat(a.nfes.len()));
        for (name, stochastic, cells) in &rows {
            print!("| {name}{} |", if *stochastic { " (stochastic)" } else { "" });
            for ((spent, d), budget) in cells.iter().zip(&a.nfes) {
                if spent == budget {
                    print!(" {d:.4} |");
                } else {
                    print!(" {d:.4} ({spent}) |");
                }
            }
            println!();
        }
    }
    if let Some(path) = a.plot {
        let series: Vec<Series> = rows
            .iter()
            .filter(|(_, stochastic, _)| !stochastic)
            .map(|(name, _, cells)| Series {
                label: name.clone(),
                points: cells.iter().map(|(n, d)| (f64::from(*n), d.max(1e-6))).collect(),
            })
            .collect();
        let img = log_log(
            &series,
            "nfe (network evaluations per image)",
            "rmse vs 1000-step reference",
            (0, 2),
            (-4, 0),
        );
        let _ = std::fs::remove_file(&path);
        write_new_file(&path, &encode_png(&img, "latent-studio bench solvers")?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

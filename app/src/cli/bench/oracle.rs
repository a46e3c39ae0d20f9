//! `bench oracle`: solver error against the exact Gaussian oracle.

use std::path::PathBuf;

use anyhow::Result;
use latent_engine::image_io::{encode_png, write_new_file};
use latent_engine::sampling::oracle::{endpoint_error, observed_order, steps_for_nfe};
use latent_engine::sampling::{SOLVERS, evaluations};

use crate::plot::{Series, log_log};

/// NFE budgets of the table.
const NFES: [u32; 6] = [5, 10, 20, 50, 100, 200];

/// Prints the error table (or JSON) and optionally writes the plot.
pub fn oracle(plot: Option<PathBuf>, json: bool) -> Result<()> {
    let mut rows = vec![];
    for info in SOLVERS
        .iter()
        .filter(|s| !s.stochastic || matches!(s.name, "euler-a" | "dpm2-a" | "dpm++2s-a"))
    {
        // (budget, evaluations actually spent, error): two-evaluation solvers spend 2n - 1.
        let mut points = vec![];
        for nfe in NFES {
            let steps = steps_for_nfe(info, nfe);
            points.push((nfe, evaluations(info, steps), endpoint_error(info, steps)?));
        }
        let asymptotic: Vec<(u32, f64)> = points.iter().filter(|(n, _, _)| *n >= 40).map(|(_, s, e)| (*s, *e)).collect();
        let order = if asymptotic.len() >= 2 {
            observed_order(&asymptotic)
        } else {
            f64::NAN
        };
        let name = if info.stochastic {
            format!("{} (eta 0)", info.name)
        } else {
            info.name.to_string()
        };
        rows.push((name, info.order, order, points));
    }
    if json {
        let v: Vec<serde_json::Value> = rows
            .iter()
            .map(|(name, claimed, observed, pts)| {
                serde_json::json!({"solver": name, "order": claimed, "observed_order": observed,
                    "points": pts.iter().map(|(_, n, e)| serde_json::json!({"nfe": n, "rel_error": e})).collect::<Vec<_>>()})
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        print!("| solver | order | observed (NFE >= 40) |");
        for n in NFES {
            print!(" NFE {n} |");
        }
        println!();
        println!("|---|---|---|{}", "---|".repeat(NFES.len()));
        for (name, claimed, observed, pts) in &rows {
            print!("| {name} | {claimed} | {observed:.2} |");
            for (budget, spent, e) in pts {
                if spent == budget {
                    print!(" {e:.2e} |")
                } else {
                    print!(" {e:.2e} ({spent}) |")
                }
            }
            println!();
        }
    }
    if let Some(path) = plot {
        // Solvers whose curves coincide with another's (euler = ddim = dpm-solver-1, ancestral
        // ones at eta 0) are left out of the figure.
        let plotted = [
            "euler",
            "heun",
            "lms",
            "dpm-solver-2",
            "dpm-solver-3",
            "dpm++2m",
            "dpm++3m",
            "dpm++2s",
            "unipc",
            "dpm2",
            "plms",
            "deis",
        ];
        let series: Vec<Series> = rows
            .iter()
            .filter(|(name, ..)| plotted.contains(&name.as_str()))
            .map(|(name, _, _, pts)| Series {
                label: name.clone(),
                points: pts.iter().map(|(_, n, e)| (*n as f64, *e)).collect(),
            })
            .collect();
        let img = log_log(
            &series,
            "nfe (network evaluations)",
            "relative error vs exact ode solution (gaussian data)",
            (0, 3),
            (-7, 0),
        );
        let _ = std::fs::remove_file(&path);
        write_new_file(&path, &encode_png(&img, "latent-studio bench oracle")?)?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

//! `compare`: the solver lab on the command line. Several solvers run the same prompt and
//! seed at equal cost (NFE budgets, CFG's second pass counted), each cell measured against a
//! long reference run of the same seed; written as a labelled grid PNG, a PNG per cell with
//! its A1111 parameters, a CSV and a convergence plot (SVG and PNG).

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use latent_engine::GenerateRequest;

use latent_engine::pipeline::Pipeline;
use latent_engine::pipeline::compare::{Cell, CompareSpec, compare as run_compare};
use latent_engine::protocol::ImageRgb8;

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Checkpoint (default: the embedded model).
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long, default_value = "a yellow star on a black background")]
    prompt: String,
    #[arg(long, default_value = "")]
    negative: String,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Guidance scale (default: the model's own).
    #[arg(long)]
    cfg: Option<f64>,
    /// Schedule every solver runs on (default: each solver's own, as diffusers builds it).
    #[arg(long, default_value = "default")]
    schedule: String,
    /// Solvers, comma-separated (`latent-studio solvers` lists them).
    #[arg(long, value_delimiter = ',', default_value = "euler,heun,dpm++2m,unipc")]
    solvers: Vec<String>,
    /// NFE budgets per image, comma-separated: each cell spends its budget (or the nearest
    /// below where a solver's step cost does not divide it).
    #[arg(long, value_delimiter = ',', default_value = "8,16,32")]
    nfe: Vec<u32>,
    /// The reference run every cell is measured against: SOLVER:STEPS.
    #[arg(long, default_value = "dpm++2m:200")]
    reference: String,
    #[arg(long)]
    width: Option<u32>,
    #[arg(long)]
    height: Option<u32>,
    /// A new (or empty) folder for grid.png, compare.csv, convergence.svg/png and cells/.
    #[arg(long)]
    out: PathBuf,
}

pub fn compare(a: CompareArgs) -> Result<()> {
    if a.out.exists() && std::fs::read_dir(&a.out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        bail!(
            "{} is not an empty folder: compare writes into a new one and never overwrites",
            a.out.display()
        );
    }
    if a.solvers.is_empty() || a.nfe.is_empty() {
        bail!("give at least one solver and one --nfe budget");
    }
    if a.nfe.iter().any(|&n| n == 0 || n > 10_000) {
        bail!("--nfe budgets must be 1 to 10000");
    }
    let (ref_solver, ref_steps) = a
        .reference
        .split_once(':')
        .and_then(|(s, n)| Some((s.to_string(), n.parse::<u32>().ok().filter(|n| (1..=1000).contains(n))?)))
        .with_context(|| format!("--reference takes SOLVER:STEPS (1 to 1000 steps), got {:?}", a.reference))?;
    let model = a
        .model
        .clone()
        .or_else(crate::assets::embedded_model)
        .context("no --model given, and this build has no embedded model")?;
    let pipe = Pipeline::load(&latent_engine::ModelSpec::new(&model))?;
    let info = pipe.info();
    let base = GenerateRequest {
        prompt: a.prompt.clone(),
        negative: a.negative.clone(),
        width: a.width.unwrap_or(info.default_size.0),
        height: a.height.unwrap_or(info.default_size.1),
        cfg_scale: a.cfg.unwrap_or(info.default_guidance),
        seed: a.seed,
        schedule: a.schedule.clone(),
        ..GenerateRequest::default()
    };
    let spec = CompareSpec {
        base,
        solvers: a.solvers.clone(),
        budgets: a.nfe.clone(),
        reference_solver: ref_solver,
        reference_steps: ref_steps,
    };
    eprintln!(
        "reference: {} x {} steps; then {} solvers x {} budgets",
        spec.reference_solver,
        spec.reference_steps,
        spec.solvers.len(),
        spec.budgets.len()
    );
    let c = run_compare(&pipe, &spec, &mut Printing)?;
    let title = crate::lab_report::title(&spec);
    crate::lab_report::write(&a.out, &spec, &c.cells, (&c.reference.image, &c.reference.metadata), &title).map_err(anyhow::Error::msg)?;
    println!(
        "wrote {}: grid.png, compare.csv, convergence.svg, convergence.png, cells/",
        a.out.display()
    );
    Ok(())
}

/// Prints each cell as it ends.
struct Printing;

impl latent_engine::pipeline::Hooks for Printing {
    fn cancelled(&self) -> bool {
        false
    }
    fn progress(&mut self, _: u32, _: u32, _: std::time::Duration) {}
    fn wants_preview(&self, _: u32) -> bool {
        false
    }
    fn preview(&mut self, _: u32, _: ImageRgb8) {}
    fn cell(&mut self, cell: &Cell) {
        if cell.steps == 0 {
            eprintln!("{:>12} NFE {:>4}: no step fits", cell.solver, cell.budget);
        } else {
            eprintln!(
                "{:>12} NFE {:>4}: {:>3} steps, {:>4} NFE, {:.2} s, latent rel L2 {:.4}, PSNR {:.1} dB",
                cell.solver,
                cell.budget,
                cell.steps,
                cell.nfe,
                cell.time.as_secs_f64(),
                cell.latent_rel_l2,
                cell.psnr
            );
        }
    }
}

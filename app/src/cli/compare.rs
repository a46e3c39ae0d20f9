//! `compare`: the solver lab on the command line. Several solvers run the same prompt and
//! seed at equal cost (NFE budgets, CFG's second pass counted), each cell measured against a
//! long reference run of the same seed; written as a labelled grid PNG, a PNG per cell with
//! its A1111 parameters, a CSV and a convergence plot (SVG and PNG).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use latent_engine::GenerateRequest;
use latent_engine::image_io::{encode_png, write_new_file};
use latent_engine::pipeline::Pipeline;
use latent_engine::pipeline::compare::{Cell, CompareSpec, compare as run_compare};
use latent_engine::protocol::ImageRgb8;

use super::bench::plot::{Canvas, Series, log_log};

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
    std::fs::create_dir_all(a.out.join("cells")).with_context(|| format!("cannot make {}", a.out.display()))?;
    eprintln!(
        "reference: {} x {} steps; then {} solvers x {} budgets",
        spec.reference_solver,
        spec.reference_steps,
        spec.solvers.len(),
        spec.budgets.len()
    );
    let c = run_compare(&pipe, &spec, &mut Printing)?;
    for cell in &c.cells {
        if let Some(img) = &cell.image {
            let f = a.out.join("cells").join(format!("{}_nfe{}.png", safe(&cell.solver), cell.budget));
            write_new_file(&f, &encode_png(img, &cell.metadata)?)?;
        }
    }
    write_new_file(
        &a.out.join("cells/reference.png"),
        &encode_png(&c.reference.image, &c.reference.metadata)?,
    )?;
    write_new_file(&a.out.join("compare.csv"), csv(&c.cells).as_bytes())?;
    let title = format!(
        "\"{}\" seed {} cfg {} {} schedule; reference {} x {}",
        a.prompt, a.seed, spec.base.cfg_scale, a.schedule, spec.reference_solver, spec.reference_steps
    );
    write_new_file(&a.out.join("grid.png"), &encode_png(&grid(&c.cells, &spec, &title), &title)?)?;
    let series = series(&c.cells, &spec.solvers);
    write_new_file(&a.out.join("convergence.svg"), svg(&series, &title).as_bytes())?;
    let (xr, yr) = decades(&series);
    let plot = log_log(&series, "nfe per image", "latent distance to the reference (relative)", xr, yr);
    write_new_file(&a.out.join("convergence.png"), &encode_png(&plot, &title)?)?;
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

fn safe(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' })
        .collect()
}

/// One row per cell.
pub fn csv(cells: &[Cell]) -> String {
    let mut s = String::from("solver,nfe_budget,steps,nfe_spent,seconds,latent_rel_l2,psnr_db\n");
    for c in cells {
        if c.steps == 0 {
            let _ = writeln!(s, "{},{},0,0,,,", c.solver, c.budget);
        } else {
            let _ = writeln!(
                s,
                "{},{},{},{},{:.4},{:.6e},{:.3}",
                c.solver,
                c.budget,
                c.steps,
                c.nfe,
                c.time.as_secs_f64(),
                c.latent_rel_l2,
                c.psnr
            );
        }
    }
    s
}

/// Distance against the NFE spent, one line per solver (cells that ran only).
fn series(cells: &[Cell], solvers: &[String]) -> Vec<Series> {
    solvers
        .iter()
        .map(|s| Series {
            label: s.clone(),
            points: cells
                .iter()
                .filter(|c| &c.solver == s && c.steps > 0)
                .map(|c| (f64::from(c.nfe), c.latent_rel_l2.max(1e-6)))
                .collect(),
        })
        .collect()
}

fn decades(series: &[Series]) -> ((i32, i32), (i32, i32)) {
    let pts: Vec<(f64, f64)> = series.iter().flat_map(|s| s.points.iter().copied()).collect();
    let span = |f: fn(&(f64, f64)) -> f64| {
        let lo = pts.iter().map(f).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(f).fold(f64::NEG_INFINITY, f64::max);
        if lo.is_finite() && hi.is_finite() {
            (
                lo.log10().floor() as i32,
                (hi.log10().ceil() as i32).max(lo.log10().floor() as i32 + 1),
            )
        } else {
            (0, 1)
        }
    };
    (span(|p| p.0), span(|p| p.1))
}

/// The convergence plot as SVG: log-log axes, one polyline per solver.
pub fn svg(series: &[Series], title: &str) -> String {
    let (w, h, l, r, t, b) = (760.0, 480.0, 70.0, 170.0, 40.0, 50.0);
    let ((x0, x1), (y0, y1)) = decades(series);
    let map = |x: f64, y: f64| {
        let fx = (x.log10() - f64::from(x0)) / f64::from(x1 - x0);
        let fy = (y.log10() - f64::from(y0)) / f64::from(y1 - y0);
        (l + fx * (w - l - r), t + (1.0 - fy) * (h - t - b))
    };
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    let colours = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
    ];
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{l}\" y=\"20\">{}</text>\n",
        esc(title)
    );
    for d in x0..=x1 {
        let (px, _) = map(10f64.powi(d), 10f64.powi(y0));
        let _ = writeln!(
            s,
            "<line x1=\"{px:.1}\" y1=\"{t}\" x2=\"{px:.1}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{px:.1}\" y=\"{}\" text-anchor=\"middle\">{}</text>",
            h - b,
            h - b + 16.0,
            10f64.powi(d)
        );
    }
    for d in y0..=y1 {
        let (_, py) = map(10f64.powi(x0), 10f64.powi(d));
        let _ = writeln!(
            s,
            "<line x1=\"{l}\" y1=\"{py:.1}\" x2=\"{}\" y2=\"{py:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">1e{d}</text>",
            w - r,
            l - 6.0,
            py + 4.0
        );
    }
    let _ = writeln!(
        s,
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">NFE per image (CFG's two passes counted)</text>",
        (l + w - r) / 2.0,
        h - 10.0
    );
    let _ = writeln!(
        s,
        "<text x=\"14\" y=\"{}\" transform=\"rotate(-90 14 {})\" text-anchor=\"middle\">latent relative L2 to the reference</text>",
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    for (i, se) in series.iter().enumerate() {
        let c = colours[i % colours.len()];
        let pts: Vec<String> = se
            .points
            .iter()
            .map(|(x, y)| map(*x, *y))
            .map(|(x, y)| format!("{x:.1},{y:.1}"))
            .collect();
        let _ = writeln!(
            s,
            "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
            pts.join(" ")
        );
        for p in &se.points {
            let (x, y) = map(p.0, p.1);
            let _ = writeln!(s, "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{c}\"/>");
        }
        let ly = t + 10.0 + i as f64 * 18.0;
        let _ = writeln!(
            s,
            "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"{c}\" stroke-width=\"3\"/><text x=\"{}\" y=\"{}\">{}</text>",
            w - r + 12.0,
            w - r + 32.0,
            w - r + 38.0,
            ly + 4.0,
            esc(&se.label)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Rows = solvers, columns = budgets; each cell its picture (enlarged to at least 128 px)
/// and three lines: steps and NFE spent, seconds, distance.
pub fn grid(cells: &[Cell], spec: &CompareSpec, title: &str) -> ImageRgb8 {
    let (iw, ih) = (spec.base.width as usize, spec.base.height as usize);
    let scale = (128 / iw.max(ih).max(1)).max(1);
    let (cw, ch) = ((iw * scale).max(120), ih * scale + 36);
    let (left, top, pad) = (100usize, 40usize, 8usize);
    let cols = spec.budgets.len();
    let rows = spec.solvers.len();
    let (w, h) = (left + cols * (cw + pad) + pad, top + rows * (ch + pad) + pad);
    let mut c = Canvas::new(w, h, [250, 250, 250]);
    let ink = [20, 20, 20];
    c.label(pad, 8, title, ink);
    for (j, b) in spec.budgets.iter().enumerate() {
        c.label(left + j * (cw + pad), top - 14, &format!("nfe {b}"), ink);
    }
    for (i, s) in spec.solvers.iter().enumerate() {
        let y = top + i * (ch + pad);
        c.label(pad, y + ih * scale / 2, s, ink);
        for (j, b) in spec.budgets.iter().enumerate() {
            let x = left + j * (cw + pad);
            let Some(cell) = cells.iter().find(|k| &k.solver == s && k.budget == *b) else {
                continue;
            };
            match &cell.image {
                Some(img) => {
                    c.blit(img, x, y, scale);
                    let ty = y + ih * scale + 4;
                    c.label(x, ty, &format!("{} st, {} nfe", cell.steps, cell.nfe), ink);
                    c.label(x, ty + 10, &format!("{:.2} s", cell.time.as_secs_f64()), ink);
                    c.label(
                        x,
                        ty + 20,
                        &format!("dist {:.3} {:.1}db", cell.latent_rel_l2, cell.psnr.min(99.9)),
                        ink,
                    );
                }
                None => c.label(x, y + ih * scale / 2, "no step fits", [150, 30, 30]),
            }
        }
    }
    c.into_image()
}

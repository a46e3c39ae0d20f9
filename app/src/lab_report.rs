//! The solver lab's report (`latent-studio compare` and the window's Save): a labelled grid
//! PNG, every cell's PNG with its A1111 parameters, a CSV and the convergence plot (SVG, PNG).

use std::fmt::Write as _;
use std::path::Path;

use latent_engine::image_io::{encode_png, write_new_file};
use latent_engine::protocol::{CompareCell as Cell, CompareRequest as CompareSpec, ImageRgb8};

use crate::plot::{Canvas, Series, log_log};

/// Writes the report into `dir` (made if missing; it must be empty: nothing is overwritten).
pub fn write(dir: &Path, spec: &CompareSpec, cells: &[Cell], reference: (&ImageRgb8, &str), title: &str) -> Result<(), String> {
    if dir.exists() && std::fs::read_dir(dir).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(format!(
            "{} is not an empty folder: the lab writes into a new one and never overwrites",
            dir.display()
        ));
    }
    let fail = |e: &dyn std::fmt::Display| e.to_string();
    std::fs::create_dir_all(dir.join("cells")).map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
    for cell in cells {
        if let Some(img) = &cell.image {
            let f = dir.join("cells").join(format!("{}_nfe{}.png", safe(&cell.solver), cell.budget));
            write_new_file(&f, &encode_png(img, &cell.metadata).map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
        }
    }
    write_new_file(
        &dir.join("cells/reference.png"),
        &encode_png(reference.0, reference.1).map_err(|e| fail(&e))?,
    )
    .map_err(|e| fail(&e))?;
    write_new_file(&dir.join("compare.csv"), csv(cells).as_bytes()).map_err(|e| fail(&e))?;
    write_new_file(
        &dir.join("grid.png"),
        &encode_png(&grid(cells, spec, title), title).map_err(|e| fail(&e))?,
    )
    .map_err(|e| fail(&e))?;
    let series = series(cells, &spec.solvers);
    write_new_file(&dir.join("convergence.svg"), svg(&series, title).as_bytes()).map_err(|e| fail(&e))?;
    let (xr, yr) = decades(&series);
    let plot = log_log(&series, "nfe per image", "latent distance to the reference (relative)", xr, yr);
    write_new_file(&dir.join("convergence.png"), &encode_png(&plot, title).map_err(|e| fail(&e))?).map_err(|e| fail(&e))?;
    Ok(())
}

/// The title the report's figures carry.
pub fn title(spec: &CompareSpec) -> String {
    let b = &spec.base;
    format!(
        "\"{}\" seed {} cfg {} {} schedule; reference {} x {}",
        b.prompt, b.seed, b.cfg_scale, b.schedule, spec.reference_solver, spec.reference_steps
    )
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

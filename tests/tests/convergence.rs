//! Convergence orders on the exact Gaussian oracle: each deterministic solver's endpoint error
//! must shrink with the number of network evaluations at (about) the order it claims,
//! measured between 40 and 320 evaluations.

use latent_engine::sampling::SOLVERS;
use latent_engine::sampling::oracle::{endpoint_error, observed_order, steps_for_nfe};

#[test]
fn deterministic_solvers_converge_at_their_order() {
    let mut report = vec![];
    let mut failures = vec![];
    // Ancestral solvers are included through their deterministic limit (the oracle runs eta 0).
    let deterministic_limit = ["euler-a", "dpm2-a", "dpm++2s-a"];
    for info in SOLVERS.iter().filter(|s| !s.stochastic || deterministic_limit.contains(&s.name)) {
        let points: Vec<(u32, f64)> = [40u32, 80, 160, 320]
            .iter()
            .map(|&nfe| {
                let steps = steps_for_nfe(info, nfe);
                (
                    latent_engine::sampling::evaluations(info, steps),
                    endpoint_error(info, steps).expect("solve"),
                )
            })
            .collect();
        let order = observed_order(&points);
        report.push(format!(
            "{:14} order {} observed {order:.2} errors {:?}",
            info.name, info.order, points
        ));
        // Multistep methods start with a first-order step whose O(h^2) local error caps the
        // global order at 2 (diffusers and k-diffusion behave the same): third-order
        // multistep DPM-Solvers and LMS are held to 2 here; UniPC's corrector lifts its start.
        // PLMS's fixed Adams-Bashforth weights assume equal steps, which Karras steps are not.
        let expected = match info.name {
            "dpm-solver-3" | "dpm++3m" | "lms" | "plms" => info.order.min(2),
            _ => info.order,
        } as f64;
        if order < expected - 0.2 {
            failures.push(format!("{}: observed {order:.2} < claimed {}", info.name, info.order));
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{failures:?}\n{}", report.join("\n"));
}

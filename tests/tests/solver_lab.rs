//! The solver lab on the tiny SD1 fixture: every solver spends the NFE budget it is given
//! (or the nearest below when its step cost does not divide it), and a comparison's
//! distances are the direct computation from the cells' own runs.

use latent_engine::pipeline::compare::{CompareSpec, cell_request, compare, latent_rel_l2, psnr};
use latent_engine::pipeline::{Pipeline, request_nfe, steps_for_budget};
use latent_engine::protocol::ModelSpec;
use latent_engine::sampling::SOLVERS;
use latent_tests::{Quiet, layouts, tiny_request};

/// Counts cells and records the progress a comparison reports.
#[derive(Default)]
struct Heard {
    cells: usize,
    steps: Vec<u32>,
    totals: Vec<u32>,
}

impl latent_engine::pipeline::Hooks for Heard {
    fn cancelled(&self) -> bool {
        false
    }
    fn progress(&mut self, step: u32, total: u32, _: std::time::Duration) {
        self.steps.push(step);
        self.totals.push(total);
    }
    fn wants_preview(&self, _: u32) -> bool {
        false
    }
    fn preview(&mut self, _: u32, _: latent_engine::protocol::ImageRgb8) {}
    fn cell(&mut self, _: &latent_engine::protocol::CompareCell) {
        self.cells += 1;
    }
}

fn pipe() -> Pipeline {
    let (_, path) = &layouts("sd1")[0];
    Pipeline::load(&ModelSpec::new(path)).expect("load")
}

#[test]
fn every_solver_spends_the_budget_it_is_given() {
    let pipe = pipe();
    for info in SOLVERS {
        for (cfg, until) in [(1.0, 1.0), (3.0, 1.0), (3.0, 0.5)] {
            for budget in [2u32, 6, 10, 16, 25] {
                let mut base = tiny_request(info.name, 1, cfg, 3);
                base.cfg_until = until;
                let case = format!("{} cfg {cfg} until {until}, budget {budget}", info.name);
                let Some(steps) = steps_for_budget(&base, budget) else {
                    // Only a budget below one step's cost buys nothing.
                    assert!(request_nfe(&base).expect("known") > budget, "{case}");
                    continue;
                };
                let cost = |s: u32| request_nfe(&latent_engine::GenerateRequest { steps: s, ..base.clone() }).expect("known");
                assert!(cost(steps) <= budget, "{case}: {steps} steps cost {}", cost(steps));
                assert!(cost(steps + 1) > budget, "{case}: {} steps would fit too", steps + 1);
                // One evaluation per step, guidance doubling every one: the budget exactly.
                if info.evals_per_step == 1 && info.name != "plms" && (cfg == 1.0 || budget % 2 == 0) && until == 1.0 {
                    assert_eq!(cost(steps), budget, "{case}");
                }
            }
        }
        // And what a run actually spends is what was planned.
        let r = cell_request(&tiny_request(info.name, 1, 3.0, 3), info.name, 10).expect("affordable");
        let out = pipe.generate(&pipe.validate(&r).expect("valid"), &mut Quiet).expect("runs");
        assert_eq!(Some(out.timings.nfe), request_nfe(&r), "{}: spent vs planned", info.name);
        assert!(out.timings.nfe <= 10 && out.timings.nfe >= 8, "{}: {}", info.name, out.timings.nfe);
    }
}

#[test]
fn a_comparison_measures_every_cell_against_the_reference_of_its_seed() {
    let pipe = pipe();
    let base = tiny_request("euler", 1, 3.0, 7);
    let spec = CompareSpec {
        base: base.clone(),
        solvers: vec!["euler".into(), "heun".into(), "dpm++2m".into()],
        // 60 = the reference's own cost (30 steps with CFG): dpm++2m's cell is the reference.
        budgets: vec![1, 6, 24, 60],
        reference_solver: "dpm++2m".into(),
        reference_steps: 30,
    };
    let mut heard = Heard::default();
    let c = compare(&pipe, &spec, &mut heard).expect("compares");
    assert_eq!(c.cells.len(), 12);
    assert_eq!(heard.cells, 12);
    // Progress counts up once over every run: the reference's 30 steps and each cell's.
    let all_steps = 30 + c.cells.iter().map(|c| c.steps).sum::<u32>();
    assert_eq!(heard.steps, (1..=all_steps).collect::<Vec<_>>());
    assert!(heard.totals.iter().all(|t| *t == all_steps));
    for cell in &c.cells {
        let case = format!("{} at {}", cell.solver, cell.budget);
        if cell.budget == 1 {
            assert!(cell.steps == 0 && cell.image.is_none(), "{case}: one step with CFG costs 2");
            continue;
        }
        assert!(cell.nfe <= cell.budget && cell.nfe + 4 > cell.budget, "{case}: spent {}", cell.nfe);
        assert!(
            cell.metadata.contains(&format!("Steps: {}", cell.steps)),
            "{case}: {}",
            cell.metadata
        );
        if cell.budget == 60 {
            continue;
        }
        // The distances are the direct computation from the cell's own run.
        let r = cell_request(&base, &cell.solver, cell.budget).expect("affordable");
        assert_eq!(r.steps, cell.steps);
        let again = pipe.generate(&pipe.validate(&r).expect("valid"), &mut Quiet).expect("runs");
        let by_hand_l2 = {
            let (x, y) = (&again.latents.data, &c.reference.latents.data);
            let num: f64 = x.iter().zip(y).map(|(a, b)| f64::from(a - b).powi(2)).sum();
            let den: f64 = y.iter().map(|b| f64::from(*b).powi(2)).sum();
            (num / den).sqrt()
        };
        assert!((cell.latent_rel_l2 - by_hand_l2).abs() <= 1e-12 * by_hand_l2.max(1.0), "{case}");
        assert_eq!(cell.latent_rel_l2, latent_rel_l2(&again.latents.data, &c.reference.latents.data));
        assert_eq!(cell.psnr, psnr(&again.image, &c.reference.image), "{case}");
    }
    let at = |solver: &str, budget: u32| c.cells.iter().find(|x| x.solver == solver && x.budget == budget).expect("cell");
    let reference_cell = at("dpm++2m", 60);
    assert_eq!(reference_cell.latent_rel_l2, 0.0);
    assert!(reference_cell.psnr.is_infinite());
    // More evaluations, closer to the converged answer (deterministic solvers).
    for solver in ["euler", "heun", "dpm++2m"] {
        assert!(
            at(solver, 24).latent_rel_l2 < at(solver, 6).latent_rel_l2,
            "{solver} does not converge"
        );
    }
    // An unknown solver is an error, not a gap.
    let bad = CompareSpec {
        solvers: vec!["no-such".into()],
        ..spec
    };
    assert!(compare(&pipe, &bad, &mut Quiet).is_err());
}

#[test]
fn the_engine_runs_a_comparison_as_one_job_with_a_cell_event_each() {
    use latent_engine::protocol::{CompareRequest, Event};
    use latent_engine::{EngineConfig, EngineHandle};
    let (_, path) = &layouts("sd1")[0];
    let engine = EngineHandle::spawn(EngineConfig::default(), || {}).expect("engine");
    engine.load_model(ModelSpec::new(path)).expect("sent");
    assert!(matches!(
        engine.recv_timeout(std::time::Duration::from_secs(60)),
        Some(Event::ModelLoaded { .. })
    ));
    let request = CompareRequest {
        base: tiny_request("euler", 1, 3.0, 9),
        solvers: vec!["euler".into(), "dpm++2m".into()],
        budgets: vec![4, 8],
        reference_solver: "dpm++2m".into(),
        reference_steps: 12,
    };
    let id = engine.compare(request.clone()).expect("sent");
    let mut events = vec![];
    loop {
        let e = engine.recv_timeout(std::time::Duration::from_secs(120)).expect("an event");
        let last = e.is_final();
        events.push(e);
        if last {
            break;
        }
    }
    // Started with every run's steps (12 + 2 x (2 + 4)) and NFE, progress 1..=24, four cells, then Finished.
    assert!(
        matches!(events[0], Event::Started { id: i, total_steps: 24, nfe: 48 } if i == id),
        "{:?}",
        events[0]
    );
    let steps = latent_tests::progress_steps(&events);
    assert_eq!(steps, (1..=24).collect::<Vec<_>>());
    let cells: Vec<_> = events
        .iter()
        .filter_map(|e| {
            if let Event::CompareCell { cell, .. } = e {
                Some(cell)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(cells.len(), 4);
    assert!(cells.iter().all(|c| c.nfe == c.budget && c.image.is_some()), "{cells:?}");
    let Some(Event::Finished { timings, .. }) = events.last() else {
        panic!("{:?}", events.last())
    };
    assert_eq!(timings.nfe, 24 + 24);
    // A bad comparison fails as a job, and the engine serves on.
    let bad = CompareRequest {
        budgets: vec![],
        ..request
    };
    let id = engine.compare(bad).expect("sent");
    match engine.recv_timeout(std::time::Duration::from_secs(30)) {
        Some(Event::Failed { id: Some(i), error }) => assert!(i == id && error.contains("at least one"), "{error}"),
        other => panic!("{other:?}"),
    }
}

//! The protocol invariants of design.md, one test each, over the real engine thread (tiny SD1
//! fixture) and, where a fault must be injected, a stand-in backend behind the same protocol.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use latent_engine::pipeline::{Hooks, Output, Pipeline};
use latent_engine::protocol::{DType, Event, GenerateRequest, ImageRgb8, JobId, LatentsOut, ModelInfo, ModelSpec, Timings};
use latent_engine::worker::Backend;
use latent_engine::{EngineConfig, EngineError, EngineHandle};
use latent_tests::fixture;

fn tiny() -> ModelSpec {
    ModelSpec::new(fixture("sd1/sd1-tiny.safetensors"))
}

fn request(steps: u32, seed: u64) -> GenerateRequest {
    GenerateRequest {
        prompt: "a red cat".into(),
        negative: "blue".into(),
        width: 64,
        height: 64,
        steps,
        cfg_scale: 3.0,
        seed,
        solver: "euler".into(),
        clip_skip: 1,
        preview_every: 1,
        ..Default::default()
    }
}

fn next(engine: &EngineHandle) -> Event {
    engine.recv_timeout(Duration::from_secs(120)).expect("an event within 120 s")
}

fn loaded(config: EngineConfig) -> EngineHandle {
    let engine = EngineHandle::spawn(config, || {}).expect("spawn");
    engine.load_model(tiny()).expect("send");
    match next(&engine) {
        Event::ModelLoaded { .. } => engine,
        other => panic!("expected ModelLoaded, got {other:?}"),
    }
}

/// All events of job `id` up to and including its final event.
fn job_events(engine: &EngineHandle, id: JobId) -> Vec<Event> {
    let mut out = vec![];
    loop {
        let e = next(engine);
        if e.job() != Some(id) {
            continue;
        }
        let last = e.is_final();
        out.push(e);
        if last {
            return out;
        }
    }
}

#[test]
fn generate_yields_started_progress_then_exactly_one_final_and_no_late_previews() {
    let engine = loaded(EngineConfig::default());
    let id = engine.generate(request(4, 1)).expect("send");
    let events = job_events(&engine, id);
    assert!(
        matches!(
            events[0],
            Event::Started {
                total_steps: 4,
                nfe: 8,
                ..
            }
        ),
        "{:?}",
        events[0]
    );
    let steps = latent_tests::progress_steps(&events);
    assert_eq!(steps, vec![1, 2, 3, 4]);
    assert_eq!(events.iter().filter(|e| e.is_final()).count(), 1);
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
    let previews = events.iter().filter(|e| matches!(e, Event::Preview { .. })).count();
    assert!(previews >= 1, "previews are produced when asked for");
    // Nothing for this job after its final event.
    std::thread::sleep(Duration::from_millis(300));
    while let Some(e) = engine.try_recv() {
        assert_ne!(e.job(), Some(id), "event after the final one: {e:?}");
    }
}

#[test]
fn waker_is_called_after_every_event() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let engine = EngineHandle::spawn(EngineConfig::default(), move || {
        c.fetch_add(1, Ordering::SeqCst);
    })
    .expect("spawn");
    engine.load_model(tiny()).expect("send");
    let mut seen = 1;
    assert!(matches!(next(&engine), Event::ModelLoaded { .. }));
    let id = engine.generate(request(3, 2)).expect("send");
    seen += job_events(&engine, id).len();
    // The waker runs right after each send, so the last call may trail the last receive.
    let t0 = Instant::now();
    while calls.load(Ordering::SeqCst) < seen && t0.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        calls.load(Ordering::SeqCst) >= seen,
        "{} wakes for {seen} events",
        calls.load(Ordering::SeqCst)
    );
}

#[test]
fn cancel_stops_the_running_job_before_its_next_evaluation() {
    // A small event queue keeps the worker at most a few events ahead of this reader, so
    // what happens after `cancel` is bounded whatever the scheduling of the test threads.
    let capacity = 4;
    let engine = loaded(EngineConfig {
        event_capacity: capacity,
        ..EngineConfig::default()
    });
    let mut req = request(200, 3);
    req.preview_every = 0;
    let id = engine.generate(req).expect("send");
    loop {
        if let Event::Progress { step: 2, .. } = next(&engine) {
            break;
        }
    }
    engine.cancel(id);
    let rest = job_events(&engine, id);
    let late_steps = rest.iter().filter(|e| matches!(e, Event::Progress { .. })).count();
    assert!(late_steps <= capacity + 1, "{late_steps} steps completed after cancel");
    match rest.last() {
        Some(Event::Cancelled { at_step, .. }) => assert!(*at_step >= 2 && *at_step as usize <= 3 + capacity, "cancelled at {at_step}"),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    // The engine keeps serving.
    let id2 = engine.generate(request(2, 3)).expect("send");
    assert!(matches!(job_events(&engine, id2).last(), Some(Event::Finished { .. })));
}

/// Cancellation is polled once per network evaluation: stopping after the k-th poll leaves
/// exactly k - 1 completed steps for a one-evaluation-per-step solver.
#[test]
fn cancel_is_checked_before_every_network_evaluation() {
    struct StopAfter {
        polls: usize,
        stop_at: usize,
    }
    impl Hooks for StopAfter {
        fn cancelled(&self) -> bool {
            self.polls >= self.stop_at
        }
        fn progress(&mut self, _: u32, _: u32, _: Duration) {}
        fn wants_preview(&self, _: u32) -> bool {
            false
        }
        fn preview(&mut self, _: u32, _: ImageRgb8) {}
    }
    // Count polls by wrapping: each `cancelled` call is one evaluation about to happen.
    struct Counting(StopAfter, std::cell::Cell<usize>);
    impl Hooks for Counting {
        fn cancelled(&self) -> bool {
            let n = self.1.get() + 1;
            self.1.set(n);
            n > self.0.stop_at
        }
        fn progress(&mut self, s: u32, t: u32, d: Duration) {
            self.0.progress(s, t, d)
        }
        fn wants_preview(&self, s: u32) -> bool {
            self.0.wants_preview(s)
        }
        fn preview(&mut self, s: u32, i: ImageRgb8) {
            self.0.preview(s, i)
        }
    }
    let pipe = Pipeline::load(&tiny()).expect("load");
    for stop_at in [0usize, 1, 3] {
        let job = pipe.validate(&request(6, 1)).expect("valid");
        let mut hooks = Counting(StopAfter { polls: 0, stop_at }, std::cell::Cell::new(0));
        match pipe.generate(&job, &mut hooks) {
            Err(EngineError::Cancelled { at_step }) => assert_eq!(at_step as usize, stop_at),
            other => panic!("expected cancellation, got {:?}", other.map(|_| ())),
        }
        assert_eq!(hooks.1.get(), stop_at + 1, "one poll per evaluation");
    }
}

#[test]
fn a_job_cancelled_while_queued_yields_only_its_final_event() {
    let engine = loaded(EngineConfig::default());
    let first = engine.generate(request(30, 4)).expect("send");
    let queued = engine.generate(request(2, 4)).expect("send");
    engine.cancel(queued);
    engine.cancel(first);
    let events = job_events(&engine, queued);
    assert_eq!(events.len(), 1, "{events:?}");
    assert!(matches!(events[0], Event::Cancelled { at_step: 0, .. }));
}

#[test]
fn previews_are_dropped_when_the_window_is_slow_but_final_events_are_not() {
    let engine = loaded(EngineConfig {
        event_capacity: 4,
        ..EngineConfig::default()
    });
    let id = engine.generate(request(12, 5)).expect("send");
    // A window that does not drain for a while.
    std::thread::sleep(Duration::from_secs(3));
    let events = job_events(&engine, id);
    let progress = events.iter().filter(|e| matches!(e, Event::Progress { .. })).count();
    let previews = events.iter().filter(|e| matches!(e, Event::Preview { .. })).count();
    assert_eq!(progress, 12, "progress is never dropped");
    assert!(previews < 12, "some previews were dropped ({previews})");
    assert!(matches!(events.last(), Some(Event::Finished { .. })));
}

#[test]
fn same_request_and_seed_give_the_same_image_bit_for_bit() {
    let engine = loaded(EngineConfig::default());
    let image = |seed| {
        let id = engine.generate(request(4, seed)).expect("send");
        match job_events(&engine, id).pop() {
            Some(Event::Finished { image, .. }) => image,
            other => panic!("expected Finished, got {other:?}"),
        }
    };
    let a = image(7);
    let b = image(7);
    let c = image(8);
    assert_eq!(a, b);
    assert_ne!(a.pixels, c.pixels);
}

#[test]
fn no_model_and_bad_requests_fail_cleanly() {
    let engine = EngineHandle::spawn(EngineConfig::default(), || {}).expect("spawn");
    let id = engine.generate(request(2, 1)).expect("send");
    match job_events(&engine, id).as_slice() {
        [Event::Failed { error, .. }] => assert!(error.contains("no model"), "{error}"),
        other => panic!("{other:?}"),
    }
    engine.load_model(tiny()).expect("send");
    assert!(matches!(next(&engine), Event::ModelLoaded { .. }));
    let mut bad = request(2, 1);
    bad.width = 65;
    let id = engine.generate(bad).expect("send");
    match job_events(&engine, id).as_slice() {
        [Event::Failed { error, .. }] => assert!(error.contains("multiples of 8"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_failed_load_keeps_the_current_model() {
    let engine = loaded(EngineConfig::default());
    let garbage = std::env::temp_dir().join(format!("latent-garbage-{}.safetensors", std::process::id()));
    std::fs::write(&garbage, b"definitely not a checkpoint").expect("write");
    engine.load_model(ModelSpec::new(&garbage)).expect("send");
    match next(&engine) {
        Event::Failed { id: None, error } => assert!(error.contains("safetensors"), "{error}"),
        other => panic!("{other:?}"),
    }
    let id = engine.generate(request(2, 1)).expect("send");
    assert!(matches!(job_events(&engine, id).last(), Some(Event::Finished { .. })));
    let _ = std::fs::remove_file(garbage);
}

/// A backend that panics on demand and otherwise blocks until cancelled or finishes at once.
struct Faulty;

impl Backend for Faulty {
    fn load_model(&mut self, _: &ModelSpec) -> latent_engine::Result<ModelInfo> {
        Ok(ModelInfo {
            name: "faulty".into(),
            family: "test".into(),
            summary: String::new(),
            dtype: DType::F32,
            device: "cpu".into(),
            default_size: (64, 64),
            default_guidance: 7.0,
        })
    }
    fn prepare(&self, r: &GenerateRequest) -> latent_engine::Result<(u32, u32)> {
        Ok((r.steps, r.steps))
    }
    fn generate(&mut self, r: &GenerateRequest, hooks: &mut dyn Hooks) -> latent_engine::Result<Output> {
        if r.prompt == "panic" {
            panic!("injected fault");
        }
        if r.prompt == "block" {
            let t0 = Instant::now();
            while !hooks.cancelled() && t0.elapsed() < Duration::from_secs(30) {
                std::thread::sleep(Duration::from_millis(5));
            }
            return Err(EngineError::Cancelled { at_step: 0 });
        }
        hooks.progress(1, 1, Duration::ZERO);
        Ok(Output {
            image: ImageRgb8 {
                width: 1,
                height: 1,
                pixels: vec![0, 0, 0],
            },
            latents: LatentsOut {
                shape: vec![1],
                data: vec![0.0],
            },
            metadata: String::new(),
            timings: Timings::default(),
        })
    }
}

#[test]
fn a_panic_inside_a_job_becomes_failed_and_the_engine_keeps_serving() {
    let engine = EngineHandle::spawn_with_backend(EngineConfig::default(), Box::new(Faulty), || {}).expect("spawn");
    let mut r = request(1, 1);
    r.prompt = "panic".into();
    let id = engine.generate(r).expect("send");
    match job_events(&engine, id).last() {
        Some(Event::Failed { error, .. }) => assert!(error.contains("injected fault"), "{error}"),
        other => panic!("{other:?}"),
    }
    let id = engine.generate(request(1, 1)).expect("send");
    assert!(matches!(job_events(&engine, id).last(), Some(Event::Finished { .. })));
}

#[test]
fn the_caller_never_blocks_on_a_busy_engine() {
    let engine = EngineHandle::spawn_with_backend(
        EngineConfig {
            command_capacity: 2,
            ..EngineConfig::default()
        },
        Box::new(Faulty),
        || {},
    )
    .expect("spawn");
    let mut r = request(1, 1);
    r.prompt = "block".into();
    let running = engine.generate(r).expect("send");
    let t0 = Instant::now();
    let mut refused = 0;
    for _ in 0..10 {
        if engine.generate(request(1, 1)).is_err() {
            refused += 1;
        }
    }
    assert!(t0.elapsed() < Duration::from_millis(500), "sending took {:?}", t0.elapsed());
    assert!(refused > 0, "a full queue refuses instead of blocking");
    engine.cancel(running);
    assert!(matches!(job_events(&engine, running).last(), Some(Event::Cancelled { .. })));
}

#[test]
fn the_engine_thread_is_named() {
    // The worker runs on a named thread: a panic message from it names the thread, and
    // profilers show it. Check through a backend that records its thread's name.
    struct Named(Arc<std::sync::Mutex<Option<String>>>);
    impl Backend for Named {
        fn load_model(&mut self, s: &ModelSpec) -> latent_engine::Result<ModelInfo> {
            *self.0.lock().expect("lock") = std::thread::current().name().map(str::to_string);
            Faulty.load_model(s)
        }
        fn prepare(&self, r: &GenerateRequest) -> latent_engine::Result<(u32, u32)> {
            Faulty.prepare(r)
        }
        fn generate(&mut self, r: &GenerateRequest, h: &mut dyn Hooks) -> latent_engine::Result<Output> {
            Faulty.generate(r, h)
        }
    }
    let name = Arc::new(std::sync::Mutex::new(None));
    let engine = EngineHandle::spawn_with_backend(EngineConfig::default(), Box::new(Named(name.clone())), || {}).expect("spawn");
    engine.load_model(tiny()).expect("send");
    assert!(matches!(next(&engine), Event::ModelLoaded { .. }));
    assert_eq!(name.lock().expect("lock").as_deref(), Some("latent-engine"));
}

fn finished_pixels(engine: &EngineHandle, request: GenerateRequest) -> Vec<u8> {
    let id = engine.generate(request).expect("send");
    match job_events(engine, id).pop() {
        Some(Event::Finished { image, .. }) => image.pixels,
        other => panic!("expected Finished, got {other:?}"),
    }
}

#[test]
fn loras_through_the_protocol_panel_and_prompt_tags() {
    use latent_engine::protocol::LoraSpec;
    let lora = fixture("lora/sd1-kohya.safetensors");
    let config = EngineConfig {
        lora_dirs: vec![fixture("lora")],
        ..EngineConfig::default()
    };
    let engine = EngineHandle::spawn(config, || {}).expect("spawn");
    engine.load_model(tiny()).expect("send");
    assert!(matches!(next(&engine), Event::ModelLoaded { .. }));
    let base = finished_pixels(&engine, request(3, 1));
    // Panel: a report per file, and the picture changes.
    engine.set_loras(vec![LoraSpec::new(&lora, 0.8)]).expect("send");
    match next(&engine) {
        Event::LorasApplied { reports } => assert_eq!((reports[0].applied, reports[0].total), (84, 84)),
        other => panic!("{other:?}"),
    }
    let panel = finished_pixels(&engine, request(3, 1));
    assert_ne!(panel, base);
    // The same LoRA from a prompt tag gives the same picture; the tag is not encoded as text.
    engine.set_loras(vec![]).expect("send");
    assert!(matches!(next(&engine), Event::LorasApplied { .. }));
    let mut tagged = request(3, 1);
    tagged.prompt = "a red cat <lora:sd1-kohya:0.8>".into();
    assert_eq!(finished_pixels(&engine, tagged), panel);
    // Unknown tag: the job fails clearly; a LoRA for another family: Failed, model untouched.
    let mut missing = request(3, 1);
    missing.prompt = "a red cat <lora:no-such-lora>".into();
    let id = engine.generate(missing).expect("send");
    match job_events(&engine, id).as_slice() {
        [Event::Failed { error, .. }] => assert!(error.contains("no-such-lora"), "{error}"),
        other => panic!("{other:?}"),
    }
    engine
        .set_loras(vec![LoraSpec::new(fixture("lora/sdxl-kohya.safetensors"), 1.0)])
        .expect("send");
    match next(&engine) {
        Event::Failed { id: None, error } => assert!(error.contains("does not fit"), "{error}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(finished_pixels(&engine, request(3, 1)), base);
}

//! The real window, driven by egui_kittest, with a stand-in engine behind the same protocol:
//! what the user does becomes the right commands, and what the engine says shows up.
//! Snapshot images of the main states live in `app/tests/snapshots/`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use eframe::egui;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use latent_engine::error::EngineError;
use latent_engine::metadata::Parameters;
use latent_engine::pipeline::{Hooks, Output};
use latent_engine::protocol::{DType, GenerateRequest, ImageRgb8, LatentsOut, LoraSpec, ModelInfo, ModelSpec, Timings};
use latent_engine::worker::Backend;
use latent_studio::gui::app::{Launch, StudioApp};
use latent_studio::gui::state::{LoraEntry, ModelState, SeedMode, Settings};

/// What the stand-in engine does with a generation.
#[derive(Clone, Debug, PartialEq)]
enum Mode {
    /// Runs all steps and finishes.
    Finish,
    /// Stops after step 1 until the test opens the gate (or the job is cancelled).
    Hold,
    /// Fails with this message.
    Fail(String),
}

#[derive(Default)]
struct Log {
    loads: Vec<ModelSpec>,
    requests: Vec<GenerateRequest>,
    loras: Vec<Vec<LoraSpec>>,
    cancelled_at: Vec<u32>,
}

struct Fake {
    log: Arc<Mutex<Log>>,
    mode: Arc<Mutex<Mode>>,
    gate: crossbeam_channel::Receiver<()>,
}

fn solid(w: u32, h: u32, rgb: [u8; 3]) -> ImageRgb8 {
    ImageRgb8 {
        width: w,
        height: h,
        pixels: rgb.iter().copied().cycle().take((w * h * 3) as usize).collect(),
    }
}

/// A gradient so the snapshots show something recognisable.
fn picture(w: u32, h: u32, step: u32) -> ImageRgb8 {
    let mut pixels = Vec::with_capacity((w * h * 3) as usize);
    for y in 0..h {
        for x in 0..w {
            pixels.extend([(x * 255 / w.max(1)) as u8, (y * 255 / h.max(1)) as u8, (step * 40).min(255) as u8]);
        }
    }
    ImageRgb8 {
        width: w,
        height: h,
        pixels,
    }
}

impl Backend for Fake {
    fn load_model(&mut self, spec: &ModelSpec) -> latent_engine::Result<ModelInfo> {
        self.log.lock().expect("log").loads.push(spec.clone());
        if spec.path.to_string_lossy().contains("broken") {
            return Err(EngineError::BadSafetensors {
                path: spec.path.clone(),
                reason: "the file is truncated".into(),
            });
        }
        Ok(ModelInfo {
            name: "fake-sd15".into(),
            family: "SD 1.x".into(),
            summary: "a stand-in".into(),
            dtype: DType::F32,
            device: "cpu".into(),
            default_size: (512, 512),
            default_guidance: if spec.path.to_string_lossy().contains("small") { 3.0 } else { 7.0 },
        })
    }
    fn prepare(&self, request: &GenerateRequest) -> latent_engine::Result<(u32, u32)> {
        Ok((request.steps, request.steps * 2))
    }
    fn generate(&mut self, request: &GenerateRequest, hooks: &mut dyn Hooks) -> latent_engine::Result<Output> {
        self.log.lock().expect("log").requests.push(request.clone());
        let mode = self.mode.lock().expect("mode").clone();
        if let Mode::Fail(m) = mode {
            return Err(EngineError::InvalidRequest(m));
        }
        let cancelled = |log: &Arc<Mutex<Log>>, at: u32| {
            log.lock().expect("log").cancelled_at.push(at);
            Err(EngineError::Cancelled { at_step: at })
        };
        for step in 1..=request.steps {
            if hooks.cancelled() {
                return cancelled(&self.log, step - 1);
            }
            hooks.progress(step, request.steps, Duration::from_millis(250));
            if hooks.wants_preview(step) {
                hooks.preview(step, picture(16, 16, step));
            }
            if mode == Mode::Hold && step == 1 {
                loop {
                    if hooks.cancelled() {
                        return cancelled(&self.log, step);
                    }
                    if self.gate.recv_timeout(Duration::from_millis(2)).is_ok() {
                        break;
                    }
                }
            }
        }
        let mut p = Parameters {
            prompt: request.prompt.clone(),
            negative: request.negative.clone(),
            pairs: vec![],
        };
        p.push("Steps", request.steps)
            .push("Sampler", "Euler")
            .push("CFG scale", request.cfg_scale)
            .push("Seed", request.seed)
            .push("Size", format!("{}x{}", request.width, request.height))
            .push("Solver", &request.solver)
            .push("Schedule", &request.schedule);
        Ok(Output {
            image: picture(request.width, request.height, request.steps),
            latents: LatentsOut {
                shape: vec![1],
                data: vec![0.0],
            },
            metadata: p.to_text(),
            timings: Timings {
                total: Duration::from_millis(1500),
                nfe: request.steps * 2,
                ..Timings::default()
            },
        })
    }
    fn set_loras(&mut self, loras: &[LoraSpec]) -> latent_engine::Result<Vec<latent_engine::lora::LoraReport>> {
        self.log.lock().expect("log").loras.push(loras.to_vec());
        Ok(loras
            .iter()
            .map(|l| latent_engine::lora::LoraReport {
                name: l.path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
                applied: 12,
                total: 12,
                unmatched: vec![],
            })
            .collect())
    }
}

/// A file dropped on the window.
#[derive(Debug)]
struct Dropped(PathBuf);

impl egui::DroppedFile for Dropped {
    fn path(&self) -> &Path {
        &self.0
    }
    fn bytes(&self) -> Result<Vec<u8>, String> {
        std::fs::read(&self.0).map_err(|e| e.to_string())
    }
}

struct Studio {
    harness: Harness<'static, StudioApp>,
    log: Arc<Mutex<Log>>,
    mode: Arc<Mutex<Mode>>,
    gate: crossbeam_channel::Sender<()>,
    out: PathBuf,
}

fn temp_dir(name: &str) -> PathBuf {
    // A fixed name: the output folder's name is on screen in the snapshots.
    let d = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("window-{name}"));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("tmp dir");
    d
}

/// Settings every test starts from: fixed seed, small images, a prompt.
fn settings() -> Settings {
    let mut s = Settings::default();
    s.params.seed = 42;
    s.params.seed_mode = SeedMode::Fixed;
    s.params.steps = 6;
    s.params.width = 64;
    s.params.height = 64;
    s.params.solver = "euler".into();
    s.params.schedule = "default".into();
    s.theme = latent_studio::gui::state::ThemeChoice::Dark;
    // The stand-in model's native size: loading it keeps the sliders' 64x64.
    s.native_size = Some((512, 512));
    s.native_guidance = Some(7.0);
    s
}

fn studio(name: &str, settings: Settings, model: Option<&str>) -> Studio {
    studio_in(name, settings, model, None)
}

/// [`studio`] with a shipped LoRA folder.
fn studio_in(name: &str, settings: Settings, model: Option<&str>, builtin_loras: Option<PathBuf>) -> Studio {
    let log = Arc::new(Mutex::new(Log::default()));
    let mode = Arc::new(Mutex::new(Mode::Finish));
    let (gate_tx, gate_rx) = crossbeam_channel::unbounded();
    let out = temp_dir(name);
    let backend = Fake {
        log: log.clone(),
        mode: mode.clone(),
        gate: gate_rx,
    };
    let launch = Launch {
        settings: Some(settings),
        backend: Some(Box::new(backend)),
        model: model.map(PathBuf::from),
        default_model: None,
        builtin_loras,
        output_dir: Some(out.clone()),
        load_history: false,
        dialogs: false,
    };
    let harness = Harness::builder()
        .with_size([1200.0, 760.0])
        .with_max_steps(8)
        .build_eframe(move |cc| {
            let mut app = StudioApp::new(cc, launch).expect("the app starts");
            app.session.renderer = "test".into();
            app
        });
    let mut s = Studio {
        harness,
        log,
        mode,
        gate: gate_tx,
        out,
    };
    s.harness.state_mut().set_memory_display(false);
    s
}

impl Studio {
    /// A snapshot without the pointer (a hovered widget or a tooltip would depend on how many
    /// frames the wait took) and after animations settle. The software rasterizer antialiases a
    /// few glyph and curve edges differently on AVX2 and AVX-512 machines (11-23 pixels of a
    /// snapshot seen so far): up to 64 such pixels pass, a moved or missing widget does not.
    fn snapshot(&mut self, name: &str) {
        self.harness.remove_cursor();
        self.harness.run_steps(30);
        let options = egui_kittest::SnapshotOptions::new().max_failed_pixels(64);
        self.harness.snapshot_options(name, &options);
    }

    /// Steps frames until `done` holds (the engine answers on its own thread).
    fn until(&mut self, what: &str, done: impl Fn(&StudioApp, &Log) -> bool) {
        let start = Instant::now();
        loop {
            self.harness.step();
            if done(self.harness.state(), &self.log.lock().expect("log")) {
                // One more frame so the UI shows what just arrived.
                self.harness.step();
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(3));
        }
    }

    fn loaded(&mut self) {
        self.until("model loaded", |a, _| matches!(a.session.model, ModelState::Loaded { .. }));
    }

    fn type_prompt(&mut self, text: &str) {
        let node = self
            .harness
            .get_by_role_and_label(egui::accesskit::Role::MultilineTextInput, "Prompt");
        node.focus();
        node.type_text(text);
        self.harness.step();
    }
}

#[test]
fn ctrl_enter_sends_the_request_the_sliders_show() {
    let mut s = studio("ctrl-enter", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    s.type_prompt("a red apple");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("the engine received the request", |_, log| !log.requests.is_empty());
    let r = s.log.lock().expect("log").requests[0].clone();
    assert_eq!(r.prompt, "a red apple");
    assert_eq!((r.seed, r.steps, r.width, r.height), (42, 6, 64, 64));
    assert_eq!((r.solver.as_str(), r.schedule.as_str(), r.cfg_scale), ("euler", "default", 7.0));
    assert_eq!(s.log.lock().expect("log").loads[0].path, Path::new("/models/fake.safetensors"));
    // Ctrl+Enter did not put a newline into the prompt.
    assert_eq!(s.harness.state().settings.params.prompt, "a red apple");
    s.until("finished and saved", |a, _| {
        a.session.history.first().is_some_and(|h| h.path.is_some())
    });
    let saved = s.harness.state().session.history[0].path.clone().expect("saved");
    assert!(saved.starts_with(&s.out));
    let text = latent_engine::image_io::read_png_parameters(&saved)
        .expect("reads")
        .expect("has parameters");
    assert!(text.starts_with("a red apple\n") && text.contains("Seed: 42"), "{text}");
}

#[test]
fn the_feature_cache_reaches_the_request_and_the_cost_line() {
    let mut settings = settings();
    settings.params.feature_cache = 3;
    let mut s = studio("feature-cache", settings, Some("/models/fake.safetensors"));
    s.loaded();
    // 6 Euler steps with CFG: 12 evaluations; whole ones at steps 0 and 3, two passes each.
    assert!(s.harness.query_by_label("Cost: 12 network evaluations, 4 of them whole").is_some());
    s.type_prompt("a red apple");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("the engine received the request", |_, log| !log.requests.is_empty());
    assert_eq!(s.log.lock().expect("log").requests[0].feature_cache, 3);
}

#[test]
fn previews_fill_the_canvas_and_the_step_strip() {
    let mut st = settings();
    st.params.prompt = "a blue square".into();
    let mut s = studio("preview", st, Some("/models/fake.safetensors"));
    *s.mode.lock().expect("mode") = Mode::Hold;
    s.loaded();
    s.harness.get_by_label("Generate").click();
    s.until("first preview", |a, _| a.session.canvas.is_some());
    {
        let app = s.harness.state();
        assert_eq!(
            app.session.canvas.as_ref().map(|(_, size)| *size),
            Some([16, 16]),
            "the preview is on the canvas"
        );
        assert_eq!(app.session.strip.len(), 1);
        assert_eq!(app.session.jobs.front().map(|j| (j.step, j.total_steps, j.nfe)), Some((1, 6, 12)));
    }
    // The progress bar says where the job is.
    assert!(s.harness.query_by_label_contains("step 1/6").is_some());
    s.snapshot("generating");
    s.gate.send(()).expect("gate");
    s.until("finished", |a, _| a.session.jobs.is_empty() && !a.session.history.is_empty());
    let app = s.harness.state();
    assert_eq!(app.session.strip.len(), 6, "one preview per step");
    assert_eq!(
        app.session.canvas.as_ref().map(|(_, size)| *size),
        Some([64, 64]),
        "the decoded image replaced the preview"
    );
    assert_eq!(app.session.last.as_ref().map(|t| t.nfe), Some(12));
    // Scrubbing back shows an earlier preview.
    s.until("saved", |a, _| a.session.history[0].path.is_some());
    s.snapshot("finished");
    // View > Timing log lists the image's per-stage split.
    s.harness.get_by_label("View").click();
    s.harness.run_steps(3);
    s.harness.get_by_label("Timing log").click();
    s.harness.run_steps(3);
    assert_eq!(s.harness.state().session.timing_log.len(), 1);
    assert!(s.harness.query_by_label("1.50").is_some(), "the total time is in the log");
}

#[test]
fn cancel_by_button_and_by_escape() {
    let mut s = studio("cancel", settings(), Some("/models/fake.safetensors"));
    *s.mode.lock().expect("mode") = Mode::Hold;
    s.loaded();
    s.harness.get_by_label("Generate").click();
    s.until("running", |a, _| a.session.running().is_some_and(|j| j.step == 1));
    s.harness.get_all_by_label("Cancel").next().expect("a Cancel button").click();
    s.until("cancelled", |a, _| a.session.jobs.is_empty());
    assert_eq!(s.log.lock().expect("log").cancelled_at, vec![1]);
    assert!(s.harness.query_by_label_contains("Cancelled at step 1").is_some());
    assert!(s.harness.state().session.history.is_empty());

    s.harness.get_by_label("Generate").click();
    s.until("running again", |a, _| a.session.running().is_some_and(|j| j.step == 1));
    s.harness.key_press(egui::Key::Escape);
    s.until("cancelled by Esc", |a, _| a.session.jobs.is_empty());
    assert_eq!(s.log.lock().expect("log").cancelled_at, vec![1, 1]);
}

#[test]
fn engine_errors_are_shown_and_the_window_keeps_working() {
    let mut s = studio("failed", settings(), Some("/models/broken.safetensors"));
    s.until("load failed", |a, _| {
        matches!(a.session.model, ModelState::None) && !a.session.messages.is_empty()
    });
    assert!(s.harness.query_by_label_contains("the file is truncated").is_some());
    // Generating without a model says what to do instead of failing.
    s.harness.get_by_label("Generate").click();
    s.harness.step();
    assert!(s.harness.query_by_label_contains("Open a model first").is_some());
    assert!(s.log.lock().expect("log").requests.is_empty());

    s.harness.state_mut().open_model(Path::new("/models/fake.safetensors"));
    s.loaded();
    *s.mode.lock().expect("mode") = Mode::Fail("width must be a multiple of 8 (got 65)".into());
    s.harness.get_by_label("Generate").click();
    s.until("failed", |a, _| {
        a.session.jobs.is_empty() && a.session.messages.iter().any(|m| m.text.contains("multiple of 8"))
    });
    s.snapshot("error");
    *s.mode.lock().expect("mode") = Mode::Finish;
    s.harness.get_by_label("Generate").click();
    s.until("the next job works", |a, _| !a.session.history.is_empty());
}

#[test]
fn dropping_a_png_restores_its_settings() {
    let mut s = studio("restore", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    let png = s.out.join("from-a1111.png");
    let text = "a green circle\nNegative prompt: blurry\nSteps: 12, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 4.5, Seed: 1234, Size: 96x128, Model: x";
    std::fs::write(
        &png,
        latent_engine::image_io::encode_png(&solid(8, 8, [0, 200, 0]), text).expect("png"),
    )
    .expect("write");
    s.harness.input_mut().dropped_files.push(Arc::new(Dropped(png.clone())));
    s.harness.step();
    s.harness.step();
    let p = s.harness.state().settings.params.clone();
    assert_eq!((p.prompt.as_str(), p.negative.as_str()), ("a green circle", "blurry"));
    assert_eq!((p.steps, p.cfg_scale, p.seed, p.width, p.height), (12, 4.5, 1234, 96, 128));
    assert_eq!(
        (p.solver.as_str(), p.schedule.as_str(), p.seed_mode),
        ("dpm++2m", "karras", SeedMode::Fixed)
    );
    // The sliders show the restored values.
    let slider = |s: &Studio, name: &str| {
        s.harness
            .get_by_role_and_label(egui::accesskit::Role::Slider, name)
            .accesskit_node()
            .numeric_value()
    };
    assert_eq!(slider(&s, "Steps"), Some(12.0));
    assert_eq!(slider(&s, "Height"), Some(128.0));
    assert_eq!(slider(&s, "CFG scale"), Some(4.5));
    // Generating now uses them.
    s.harness.get_by_label("Generate").click();
    s.until("sent", |_, log| !log.requests.is_empty());
    let r = s.log.lock().expect("log").requests[0].clone();
    assert_eq!(
        (r.seed, r.steps, r.width, r.height, r.solver.as_str()),
        (1234, 12, 96, 128, "dpm++2m")
    );
    // The image shows in the history; clicking another history item restores that one.
    s.until("both in history", |a, _| {
        a.session.history.len() == 2 && a.session.history.iter().all(|h| h.path.is_some())
    });
    s.harness.state_mut().select_history(1);
    assert_eq!(s.harness.state().settings.params.prompt, "a green circle");
}

#[test]
fn lora_panel_and_prompt_tags_stay_in_sync() {
    let mut st = settings();
    st.loras.push(LoraEntry {
        path: PathBuf::from("/loras/ink.safetensors"),
        strength: 1.0,
        enabled: true,
    });
    let mut s = studio("lora", st, Some("/models/fake.safetensors"));
    s.loaded();
    s.harness.state_mut().session.found_loras = vec![PathBuf::from("/loras/pastel.safetensors")];
    s.until("panel applied at start", |_, log| !log.loras.is_empty());
    assert!(s.harness.query_by_label_contains("12/12 layers").is_some());
    // A tag typed in the prompt adds its LoRA to the panel.
    s.type_prompt("a cat <lora:pastel:0.4>");
    s.until("tag applied", |_, log| log.loras.len() >= 2);
    let last = s.log.lock().expect("log").loras.last().cloned().expect("a set");
    assert_eq!(last.len(), 2);
    assert_eq!(
        (last[1].path.as_path(), last[1].strength),
        (Path::new("/loras/pastel.safetensors"), 0.4)
    );
    // Disabling it in the panel removes the tag and the LoRA.
    let before = s.log.lock().expect("log").loras.len();
    s.harness.state_mut().settings.loras[1].enabled = false;
    let entry = s.harness.state().settings.loras[1].clone();
    {
        let app = s.harness.state_mut();
        app.settings.params.prompt = latent_studio::gui::state::prompt_from_panel(&app.settings.params.prompt, &entry.name(), Some(&entry));
        app.push_loras();
    }
    s.until("applied", |_, log| log.loras.len() > before);
    assert_eq!(s.harness.state().settings.params.prompt, "a cat");
    assert_eq!(s.log.lock().expect("log").loras.last().map(Vec::len), Some(1));
}

#[test]
fn the_shipped_lora_folder_is_listed_with_the_users_own() {
    let dir = temp_dir("builtin-loras");
    let lora = dir.join("outline.safetensors");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/lora/sd1-kohya.safetensors");
    std::fs::copy(&fixture, &lora).expect("copy the fixture LoRA");
    let s = studio_in("builtin", settings(), Some("/models/fake.safetensors"), Some(dir));
    assert!(
        s.harness.state().session.found_loras.contains(&lora),
        "{:?}",
        s.harness.state().session.found_loras
    );
}

#[test]
fn live_mode_follows_the_sliders() {
    let mut st = settings();
    st.live = true;
    st.params.prompt = "live".into();
    let mut s = studio("live", st, Some("/models/fake.safetensors"));
    *s.mode.lock().expect("mode") = Mode::Hold;
    s.loaded();
    s.until("first live job", |_, log| log.requests.len() == 1);
    s.until("running", |a, _| a.session.running().is_some());
    // Several quick changes become one new job, and the stale one is cancelled.
    for steps in [7, 8, 9] {
        s.harness.state_mut().settings.params.steps = steps;
        s.harness.step();
    }
    s.until("second live job", |_, log| log.requests.len() == 2);
    let log = s.log.lock().expect("log");
    assert_eq!(log.requests[1].steps, 9);
    assert_eq!(log.cancelled_at, vec![1]);
}

#[test]
fn a_model_of_another_native_size_sets_the_size_and_the_same_one_keeps_it() {
    // First start (no model loaded before): the model's native size.
    let mut st = settings();
    st.native_size = None;
    let mut s = studio("native-first", st, Some("/models/fake.safetensors"));
    s.loaded();
    let p = &s.harness.state().settings;
    assert_eq!((p.params.width, p.params.height, p.native_size), (512, 512, Some((512, 512))));
    // A model of another native size (here the last one was a 64x64 model): its size.
    let mut st = settings();
    st.native_size = Some((64, 64));
    let mut s = studio("native-switch", st, Some("/models/fake.safetensors"));
    s.loaded();
    assert_eq!(
        (s.harness.state().settings.params.width, s.harness.state().settings.params.height),
        (512, 512)
    );
    // The same native size as last time: the user's 64x64 stays.
    let mut s = studio("native-same", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    assert_eq!(
        (s.harness.state().settings.params.width, s.harness.state().settings.params.height),
        (64, 64)
    );
}

#[test]
fn a_model_made_for_another_guidance_sets_the_cfg_slider_and_the_same_one_keeps_it() {
    // The last model was made for 7; this one (the stand-in for the embedded model) for 3.
    let mut st = settings();
    st.params.cfg_scale = 5.5;
    let mut s = studio("guidance-switch", st, Some("/models/small.safetensors"));
    s.loaded();
    let p = &s.harness.state().settings;
    assert_eq!((p.params.cfg_scale, p.native_guidance), (3.0, Some(3.0)));
    // A model made for the same guidance as last time keeps the user's value.
    let mut st = settings();
    st.params.cfg_scale = 5.5;
    let mut s = studio("guidance-same", st, Some("/models/fake.safetensors"));
    s.loaded();
    assert_eq!(s.harness.state().settings.params.cfg_scale, 5.5);
}

#[test]
fn settings_persist_through_eframe_storage() {
    struct Memory(std::collections::HashMap<String, String>);
    impl eframe::Storage for Memory {
        fn get_string(&self, key: &str) -> Option<String> {
            self.0.get(key).cloned()
        }
        fn set_string(&mut self, key: &str, value: String) {
            self.0.insert(key.into(), value);
        }
        fn remove_string(&mut self, key: &str) {
            self.0.remove(key);
        }
        fn flush(&mut self) {}
    }
    let mut st = settings();
    st.params.prompt = "kept".into();
    st.params.cfg_scale = 3.5;
    let mut s = studio("persist", st.clone(), Some("/models/fake.safetensors"));
    s.loaded();
    let mut storage = Memory(Default::default());
    eframe::App::save(s.harness.state_mut(), &mut storage);
    let back: Settings = eframe::get_value(&storage, eframe::APP_KEY).expect("stored");
    assert_eq!(back.params, st.params);
    assert_eq!(
        back.model.as_deref(),
        Some(Path::new("/models/fake.safetensors")),
        "the loaded model is remembered"
    );
}

#[test]
fn first_start_without_a_model_says_how_to_open_one() {
    let mut s = studio("empty", settings(), None);
    s.harness.run_steps(3);
    assert!(s.harness.query_by_label_contains("Open a model to start").is_some());
    s.snapshot("empty");
}

/// A folder holding a LoRA named `outline` (the fixture file), as the shipped folder does.
fn outline_dir(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let lora = dir.join("outline.safetensors");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/lora/sd1-kohya.safetensors");
    std::fs::copy(&fixture, &lora).expect("copy the fixture LoRA");
    (dir, lora)
}

/// Drops a PNG carrying `text` on the window.
fn drop_png(s: &mut Studio, name: &str, text: &str) {
    let png = s.out.join(name);
    std::fs::write(
        &png,
        latent_engine::image_io::encode_png(&solid(8, 8, [0, 200, 0]), text).expect("png"),
    )
    .expect("write");
    s.harness.input_mut().dropped_files.push(Arc::new(Dropped(png)));
    s.harness.step();
    s.harness.step();
}

fn said(s: &Studio, part: &str) -> bool {
    s.harness.state().session.messages.iter().any(|m| m.text.contains(part))
}

#[test]
fn the_demo_lora_is_listed_disabled_on_first_start() {
    let (dir, lora) = outline_dir("demo-listed-loras");
    let mut s = studio_in("demo-listed", settings(), Some("/models/fake.safetensors"), Some(dir));
    s.loaded();
    let loras = s.harness.state().settings.loras.clone();
    assert_eq!(loras.len(), 1, "{loras:?}");
    assert_eq!((loras[0].path.as_path(), loras[0].enabled), (lora.as_path(), false));
    assert!(s.harness.query_by_label("outline").is_some(), "the panel shows it");
    // Generating does not use it until it is ticked.
    s.harness.get_by_label("Generate").click();
    s.until("sent", |_, log| !log.requests.is_empty());
    assert!(s.log.lock().expect("log").loras.iter().all(Vec::is_empty));
}

#[test]
fn restoring_an_image_sets_the_lora_panel_to_the_set_it_was_made_with() {
    let (dir, lora) = outline_dir("restore-loras-dir");
    let mut st = settings();
    st.loras.push(LoraEntry {
        path: lora.clone(),
        strength: 0.8,
        enabled: true,
    });
    let mut s = studio_in("restore-loras", st, Some("/models/fake.safetensors"), Some(dir));
    s.loaded();
    s.until("panel applied at start", |_, log| log.loras.last().is_some_and(|l| l.len() == 1));
    // An image made without any LoRA: the panel's outline is switched off, and the engine told.
    let plain = "a star\nSteps: 6, Sampler: Euler, CFG scale: 3, Seed: 7, Size: 64x64";
    drop_png(&mut s, "plain.png", plain);
    assert!(!s.harness.state().settings.loras[0].enabled);
    s.until("no LoRA sent", |_, log| log.loras.last().is_some_and(Vec::is_empty));
    // One made with outline at 0.6 (our `Lora weights`): on again at that strength.
    let with = "a star\nSteps: 6, Sampler: Euler, CFG scale: 3, Seed: 7, Size: 64x64, \
                Lora hashes: \"outline: 0123456789ab\", Lora weights: \"outline: 0.6\"";
    drop_png(&mut s, "with.png", with);
    let e = s.harness.state().settings.loras[0].clone();
    assert_eq!((e.enabled, e.strength), (true, 0.6));
    s.until("outline sent", |_, log| {
        log.loras.last().is_some_and(|l| l.len() == 1 && l[0].strength == 0.6)
    });
    // One made with a LoRA this machine lacks: said, by name and hash.
    let ghost = "a star\nSteps: 6, Sampler: Euler, CFG scale: 3, Seed: 7, Size: 64x64, \
                 Lora hashes: \"ghost: feedfacecafe\"";
    drop_png(&mut s, "ghost.png", ghost);
    assert!(said(&s, "ghost (hash feedfacecafe)"), "{:?}", s.harness.state().session.messages);
    assert!(!s.harness.state().settings.loras[0].enabled, "outline is off again");
}

#[test]
fn unreadable_parameters_still_restore_the_prompt_and_say_what_was_skipped() {
    let mut s = studio("restore-partial", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    // As in A1111, a last line that is not settings belongs to the negative prompt.
    drop_png(&mut s, "odd.png", "a red square\nNegative prompt: dull\nthis line is not settings");
    let p = s.harness.state().settings.params.clone();
    assert_eq!(
        (p.prompt.as_str(), p.negative.as_str()),
        ("a red square", "dull\nthis line is not settings")
    );
    assert_eq!(p.steps, 6, "the rest is kept");
    assert!(said(&s, "Only the prompt was restored"), "{:?}", s.harness.state().session.messages);
    // A readable line with a value that cannot be used: the rest restored, that one named.
    drop_png(&mut s, "bad-steps.png", "a blue square\nSteps: many, Seed: 99, Size: 64x64");
    let p = s.harness.state().settings.params.clone();
    assert_eq!((p.prompt.as_str(), p.seed, p.steps), ("a blue square", 99, 6));
    assert!(said(&s, "Steps"), "{:?}", s.harness.state().session.messages);
}

#[test]
fn a_new_job_takes_the_canvas_back_from_a_history_image() {
    let mut s = studio("canvas-follows", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    for n in 1..=2 {
        s.harness.get_by_label("Generate").click();
        s.until("finished", |a, _| a.session.history.len() == n);
    }
    s.harness.state_mut().select_history(1);
    assert!(matches!(
        s.harness.state().session.shown,
        latent_studio::gui::state::Shown::History(1)
    ));
    s.harness.get_by_label("Generate").click();
    s.until("third", |a, _| a.session.history.len() == 3);
    assert!(
        matches!(s.harness.state().session.shown, latent_studio::gui::state::Shown::Live),
        "the canvas shows the new image"
    );
    assert_eq!(s.harness.state().session.strip.len(), 6, "the strip holds the new run's steps");
}

#[test]
fn a_typed_nan_does_not_reach_the_cfg_slider() {
    let mut s = studio("cfg-nan", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    let before = s.harness.state().settings.params.cfg_scale;
    // The slider's number field: focused, it becomes a text field; type, press Enter.
    s.harness
        .get_by_role_and_label(egui::accesskit::Role::SpinButton, "CFG scale")
        .focus();
    s.harness.run_steps(2);
    // Now in edit mode (still a spin button, holding the text).
    let edit = s.harness.get_by_role_and_label(egui::accesskit::Role::SpinButton, "CFG scale");
    assert!(edit.accesskit_node().is_focused());
    edit.type_text("nan");
    s.harness.step();
    s.harness.key_press(egui::Key::Enter);
    s.harness.run_steps(2);
    let after = s.harness.state().settings.params.cfg_scale;
    assert!(after.is_finite() && after == before, "cfg became {after}");
}

#[test]
fn without_a_file_dialog_a_path_field_opens_what_is_typed() {
    let mut s = studio("path-field", settings(), None);
    s.harness.run_steps(2);
    let models = temp_dir("path-field-models");
    std::fs::create_dir_all(models.join("sd15")).expect("dir");
    std::fs::create_dir_all(models.join("sdxl")).expect("dir");
    let model = models.join("sd15").join("tiny.safetensors");
    // A one-tensor safetensors file: enough to be taken for a model.
    let header = br#"{"model.diffusion_model.x":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#;
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header);
    bytes.extend_from_slice(&[0; 4]);
    std::fs::write(&model, bytes).expect("file");
    s.harness.get_by_label("File").click();
    s.harness.run_steps(2);
    s.harness
        .get_by_role_and_label(egui::accesskit::Role::Button, "Open model file…")
        .click();
    s.harness.run_steps(2);
    assert!(s.harness.query_by_label_contains("type the path instead").is_some(), "it says why");
    let field = s
        .harness
        .get_by_role_and_label(egui::accesskit::Role::TextInput, "File (.safetensors, .gguf)");
    field.focus();
    // Completion lists the folders under what is typed.
    field.type_text(&format!("{}/s", models.display()));
    s.harness.run_steps(2);
    assert!(s.harness.query_by_label("sd15/").is_some() && s.harness.query_by_label("sdxl/").is_some());
    s.harness.get_by_label("sd15/").click();
    s.harness.run_steps(2);
    assert!(
        s.harness.query_by_label("tiny.safetensors").is_some(),
        "the file in the folder is offered"
    );
    // A path that is not there: said in the field, nothing opened.
    s.harness.get_by_label("Open").click();
    s.harness.run_steps(2);
    assert!(s.harness.query_by_label_contains("is a folder").is_some());
    s.harness.get_by_label("tiny.safetensors").click();
    s.harness.run_steps(2);
    s.harness.get_by_label("Open").click();
    s.until("the model requested", |_, log| !log.loads.is_empty());
    assert_eq!(s.log.lock().expect("log").loads[0].path, model);
    assert!(s.harness.state().session.path_field.is_none(), "the field closes");
}

#[test]
fn live_mode_cancels_quietly() {
    let mut st = settings();
    st.live = true;
    st.params.prompt = "live".into();
    let mut s = studio("live-quiet", st, Some("/models/fake.safetensors"));
    *s.mode.lock().expect("mode") = Mode::Hold;
    s.loaded();
    s.until("running", |a, _| a.session.running().is_some());
    s.harness.state_mut().settings.params.steps = 9;
    s.until("second live job", |_, log| log.requests.len() == 2);
    s.until("the first cancelled", |_, log| !log.cancelled_at.is_empty());
    s.harness.run_steps(3);
    assert!(!said(&s, "Cancelled"), "{:?}", s.harness.state().session.messages);
    // A cancel the user asks for is still said.
    s.harness.key_press(egui::Key::Escape);
    s.until("cancelled", |_, log| log.cancelled_at.len() == 2);
    s.harness.run_steps(3);
    assert!(said(&s, "Cancelled at step"));
}

/// The studio on the real engine and the embedded model, with the shipped LoRA folder.
fn real_studio(name: &str, settings: Settings) -> Harness<'static, StudioApp> {
    let out = temp_dir(name);
    let launch = Launch {
        settings: Some(settings),
        backend: None,
        model: latent_studio::assets::embedded_model(),
        default_model: None,
        builtin_loras: latent_studio::assets::embedded_lora_dir(),
        output_dir: Some(out),
        load_history: false,
        dialogs: false,
    };
    let mut h = Harness::builder()
        .with_size([1200.0, 760.0])
        .with_max_steps(8)
        .build_eframe(move |cc| StudioApp::new(cc, launch).expect("the app starts"));
    h.state_mut().set_memory_display(false);
    h
}

fn real_until(h: &mut Harness<'static, StudioApp>, what: &str, done: impl Fn(&StudioApp) -> bool) {
    let start = Instant::now();
    while !done(h.state()) {
        h.step();
        assert!(start.elapsed() < Duration::from_secs(120), "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    h.step();
}

#[test]
fn restore_then_generate_gives_the_same_image_bit_for_bit() {
    let mut st = Settings::default();
    st.params.prompt = "a yellow star on a black background".into();
    st.params.seed = 5;
    st.params.seed_mode = SeedMode::Fixed;
    st.params.steps = 8;
    let mut h = real_studio("restore-real", st);
    real_until(&mut h, "model loaded", |a| matches!(a.session.model, ModelState::Loaded { .. }));
    let done = |n: usize| move |a: &StudioApp| a.session.history.len() == n && a.session.jobs.is_empty();
    h.state_mut().generate();
    real_until(&mut h, "A", done(1));
    // B: the demo LoRA ticked (it is listed, disabled) and a new seed.
    {
        let app = h.state_mut();
        let i = app
            .settings
            .loras
            .iter()
            .position(|l| l.name() == "outline")
            .expect("the demo LoRA is listed");
        app.settings.loras[i].enabled = true;
        app.settings.params.seed = 6;
        app.push_loras();
        app.generate();
    }
    real_until(&mut h, "B", done(2));
    assert!(h.state().session.history[0].parameters.contains("Lora hashes"));
    // Restore A, generate C: the same pixels, and no LoRA in its metadata.
    h.state_mut().select_history(1);
    assert!(h.state().settings.loras.iter().all(|l| !l.enabled), "A had no LoRA");
    h.state_mut().generate();
    real_until(&mut h, "C", done(3));
    let a = &h.state().session.history[2];
    let c = &h.state().session.history[0];
    assert!(!c.parameters.contains("Lora hashes"), "{}", c.parameters);
    let (a, c) = (a.full.clone().expect("A pixels"), c.full.clone().expect("C pixels"));
    assert_eq!((a.width, a.height), (c.width, c.height));
    assert!(a.pixels == c.pixels, "restore then Generate must give the same image");
    // A tag whose strength is not a number is left off, and said.
    h.state_mut().settings.params.prompt = "a yellow star <lora:outline:zzz>".into();
    h.state_mut().generate();
    real_until(&mut h, "D", done(4));
    let d = &h.state().session.history[0];
    assert!(!d.parameters.contains("Lora hashes"), "{}", d.parameters);
    assert!(
        h.state()
            .session
            .messages
            .iter()
            .any(|m| m.text.contains("<lora:outline:zzz>: the strength is not a number")),
        "{:?}",
        h.state().session.messages
    );
}

/// Inpainting on the real engine and the embedded model, the mask painted with the brush:
/// the result keeps the picture's size, the pixels away from the mask exactly, and changes
/// under it; "Only masked" does the same on the mask's neighbourhood.
#[test]
fn inpaint_on_the_embedded_model_repaints_only_the_painted_region() {
    let mut st = Settings::default();
    st.params.prompt = "a yellow star on a black background".into();
    st.params.seed = 7;
    st.params.seed_mode = SeedMode::Fixed;
    st.params.steps = 6;
    let mut h = real_studio("inpaint-real", st);
    real_until(&mut h, "model loaded", |a| matches!(a.session.model, ModelState::Loaded { .. }));
    let done = |n: usize| move |a: &StudioApp| a.session.history.len() == n && a.session.jobs.is_empty();
    h.state_mut().generate();
    real_until(&mut h, "the picture", done(1));
    h.get_by_label("To img2img").click();
    h.step();
    h.get_by_label("Inpaint").click();
    h.step();
    h.get_by_label("Edit mask…").click();
    h.run_steps(2);
    // A stroke across the upper left of the picture.
    let below = h.get_by_label("Invert").rect().left_bottom();
    let (a, b) = (below + egui::vec2(40.0, 60.0), below + egui::vec2(160.0, 80.0));
    h.hover_at(a);
    h.step();
    h.drag_at(a);
    h.step();
    for k in 1..=8 {
        h.hover_at(a + (b - a) * (k as f32 / 8.0));
        h.step();
    }
    h.drop_at(b);
    h.step();
    let (picture, mask) = {
        let init = h.state().session.init.as_ref().expect("init");
        assert!(init.painted() > 0.01 && init.painted() < 0.5, "painted {}", init.painted());
        (init.image.clone(), init.mask.clone())
    };
    let (w, hh) = (picture.width as i64, picture.height as i64);
    // Pixels farther than the blur's reach (kernel radius 10 for mask blur 4) from the paint.
    let far = |x: i64, y: i64| {
        let r = 12;
        (y - r..=y + r).all(|yy| (x - r..=x + r).all(|xx| xx < 0 || yy < 0 || xx >= w || yy >= hh || mask[(yy * w + xx) as usize] == 0))
    };
    let check = |h: &Harness<'static, StudioApp>, what: &str| {
        let out = h.state().session.history[0].full.clone().expect("pixels");
        assert_eq!((out.width, out.height), (picture.width, picture.height), "{what}: size");
        let (mut kept, mut far_n, mut changed) = (0, 0, 0);
        for y in 0..hh {
            for x in 0..w {
                let i = ((y * w + x) * 3) as usize;
                let same = out.pixels[i..i + 3] == picture.pixels[i..i + 3];
                if far(x, y) {
                    far_n += 1;
                    kept += usize::from(same);
                } else if mask[(y * w + x) as usize] > 0 && !same {
                    changed += 1;
                }
            }
        }
        assert!(
            far_n > 0 && kept == far_n,
            "{what}: {kept} of {far_n} pixels away from the mask kept"
        );
        let painted = mask.iter().filter(|&&m| m > 0).count();
        assert!(changed * 2 > painted, "{what}: only {changed} of {painted} painted pixels changed");
    };
    h.state_mut().settings.params.seed = 8;
    h.state_mut().generate();
    real_until(&mut h, "inpainted", done(2));
    check(&h, "whole picture");
    h.state_mut().settings.params.inpaint_area = latent_engine::protocol::InpaintArea::Masked;
    h.state_mut().generate();
    real_until(&mut h, "inpainted, only masked", done(3));
    check(&h, "only masked");
    assert!(h.state().session.history[0].parameters.contains("Inpaint area: Only masked"));
}

#[test]
fn weight_keys_token_counter_and_emphasis_reach_the_request() {
    let mut settings = settings();
    settings.params.emphasis = latent_engine::protocol::Emphasis::NoNorm;
    let mut s = studio("weight-keys", settings, Some("/models/fake.safetensors"));
    s.loaded();
    s.type_prompt("a red cat");
    s.harness.step();
    assert!(s.harness.query_by_label("3/75").is_some(), "token counter");
    // The cursor is after "cat": Ctrl+Up weights that word, again raises it.
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::ArrowUp);
    s.harness.step();
    assert_eq!(s.harness.state().settings.params.prompt, "a red (cat:1.1)");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::ArrowUp);
    s.harness.step();
    assert_eq!(s.harness.state().settings.params.prompt, "a red (cat:1.2)");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::ArrowDown);
    s.harness.step();
    assert_eq!(s.harness.state().settings.params.prompt, "a red (cat:1.1)");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("the engine received the request", |_, log| !log.requests.is_empty());
    let r = s.log.lock().expect("log").requests[0].clone();
    assert_eq!(r.prompt, "a red (cat:1.1)");
    assert_eq!(r.emphasis, latent_engine::protocol::Emphasis::NoNorm);
}

#[test]
fn the_vae_and_preview_pickers_list_their_folders_and_reload_with_the_choice() {
    let root = temp_dir("vae-root");
    let vae_dir = root.join("models/VAE");
    std::fs::create_dir_all(&vae_dir).expect("dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vae/tiny-vae.safetensors");
    std::fs::copy(&fixture, vae_dir.join("tiny-vae.safetensors")).expect("copy");
    let approx = root.join("models/VAE-approx");
    std::fs::create_dir_all(&approx).expect("dir");
    let taesd = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/taesd/taesd_decoder.safetensors");
    std::fs::copy(&taesd, approx.join("taesd_decoder.safetensors")).expect("copy");
    let mut settings = settings();
    settings.model_dirs = vec![root.clone()];
    let mut s = studio("vae-picker", settings, Some("/models/fake.safetensors"));
    s.loaded();
    assert_eq!(s.harness.state().session.found_vaes, vec![vae_dir.join("tiny-vae.safetensors")]);
    assert_eq!(
        s.harness.state().session.found_tiny_decoders,
        vec![approx.join("taesd_decoder.safetensors")]
    );
    s.harness.get_by_label("VAE").click();
    s.harness.run_steps(2);
    s.harness.get_by_label("tiny-vae.safetensors").click();
    s.until("reloaded with the VAE", |_, log| log.loads.len() >= 2);
    let load = s.log.lock().expect("log").loads[1].clone();
    assert_eq!(load.path, Path::new("/models/fake.safetensors"));
    assert_eq!(load.vae, Some(vae_dir.join("tiny-vae.safetensors")));
    assert_eq!(s.harness.state().settings.vae, Some(vae_dir.join("tiny-vae.safetensors")));
    // The preview decoder picker reloads with the tiny decoder.
    s.harness.get_by_label("Previews").click();
    s.harness.run_steps(2);
    s.harness.get_by_label("taesd_decoder.safetensors").click();
    s.until("reloaded with the tiny decoder", |_, log| log.loads.len() >= 3);
    let load = s.log.lock().expect("log").loads[2].clone();
    assert_eq!(load.tiny_decoder, Some(approx.join("taesd_decoder.safetensors")));
    assert_eq!(load.vae, Some(vae_dir.join("tiny-vae.safetensors")));
}

#[test]
fn restoring_an_image_picks_its_vae_by_hash() {
    let root = temp_dir("vae-restore-root");
    let vae_dir = root.join("models/VAE");
    std::fs::create_dir_all(&vae_dir).expect("dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/vae/tiny-vae.safetensors");
    let mine = vae_dir.join("my-copy.safetensors");
    std::fs::copy(&fixture, &mine).expect("copy");
    let hash = latent_engine::checkpoint::short_hash(&mine).expect("hash");
    let checkpoints = root.join("models/checkpoints");
    std::fs::create_dir_all(&checkpoints).expect("dir");
    let lender = checkpoints.join("lender.safetensors");
    let whole = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/sd1/sd1-tiny.safetensors");
    std::fs::copy(&whole, &lender).expect("copy");
    let mut settings = settings();
    settings.model_dirs = vec![root.clone()];
    let mut s = studio("vae-restore", settings, Some("/models/fake.safetensors"));
    s.loaded();
    // The image names the VAE by another file name: the hash finds the user's copy.
    let text =
        format!("a cat\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, VAE hash: {hash}, VAE: vae-ft-mse.safetensors");
    drop_png(&mut s, "with-vae.png", &text);
    s.until("reloaded with the VAE", |_, log| log.loads.len() >= 2);
    assert_eq!(s.log.lock().expect("log").loads[1].vae, Some(mine.clone()));
    assert_eq!(s.harness.state().settings.vae, Some(mine));
    // An unknown one is said and changes nothing.
    drop_png(
        &mut s,
        "other-vae.png",
        "a dog\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, VAE hash: 0123456789, VAE: nowhere.safetensors",
    );
    assert!(said(&s, "nowhere.safetensors"));
    assert_eq!(s.log.lock().expect("log").loads.len(), 2);
    // An image made with a UNet-only file names the checkpoint that lent its text encoders
    // and VAE: the model folders' file of that name is picked and the model reloads with it.
    drop_png(
        &mut s,
        "unet-only.png",
        "a fox\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Components: lender.safetensors",
    );
    s.until("reloaded with the components", |_, log| log.loads.len() >= 3);
    assert_eq!(s.log.lock().expect("log").loads[2].components, Some(lender.clone()));
    assert_eq!(s.harness.state().settings.components, Some(lender));
}

#[test]
fn hires_upscaler_models_are_listed_and_restored_by_name() {
    let root = temp_dir("upscaler-root");
    let dir = root.join("models/ESRGAN");
    std::fs::create_dir_all(&dir).expect("dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/upscale/esrgan-x2.safetensors");
    let mine = dir.join("4x-Mine.safetensors");
    std::fs::copy(&fixture, &mine).expect("copy");
    let mut settings = settings();
    settings.model_dirs = vec![root.clone()];
    let mut s = studio("upscaler-restore", settings, Some("/models/fake.safetensors"));
    s.loaded();
    assert_eq!(s.harness.state().session.found_upscalers, vec![mine.clone()]);
    // An A1111 image names the model by its file's stem: the folder's file is picked, and
    // Generate sends it.
    let text = "a cat\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Denoising strength: 0.4, Hires upscale: 2, Hires upscaler: 4x-Mine";
    drop_png(&mut s, "with-upscaler.png", text);
    let p = s.harness.state().settings.params.clone();
    assert!(p.hires);
    assert_eq!(p.hires_upscaler, latent_engine::protocol::HiresUpscaler::Model);
    assert_eq!(p.hires_model, Some(mine.clone()));
    s.harness.get_by_label("Generate").click();
    s.until("the engine received the request", |_, log| !log.requests.is_empty());
    let h = s.log.lock().expect("log").requests[0].hires.clone().expect("hires");
    assert_eq!(
        (h.upscaler, h.model, h.strength),
        (latent_engine::protocol::HiresUpscaler::Model, Some(mine), 0.4)
    );
    // One that is not there is said, and the latent upscaler is used.
    let text = "a cat\nSteps: 6, Sampler: Euler, CFG scale: 7, Seed: 5, Size: 64x64, Hires upscale: 2, Hires upscaler: 4x-Elsewhere";
    drop_png(&mut s, "other-upscaler.png", text);
    assert!(said(&s, "4x-Elsewhere"));
    let p = s.harness.state().settings.params.clone();
    assert_eq!(
        (p.hires_upscaler, p.hires_model),
        (latent_engine::protocol::HiresUpscaler::Latent, None)
    );
}

#[test]
fn embeddings_in_the_model_folders_are_listed_and_added_to_the_prompt() {
    let root = temp_dir("embeddings-root");
    let dir = root.join("embeddings");
    std::fs::create_dir_all(&dir).expect("dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/embeddings/tinystyle.safetensors");
    std::fs::copy(&fixture, dir.join("tinystyle.safetensors")).expect("copy");
    let mut settings = settings();
    settings.model_dirs = vec![root.clone()];
    let mut s = studio("embeddings", settings, Some("/models/fake.safetensors"));
    s.loaded();
    s.type_prompt("a cat");
    s.harness.get_by_label("Embeddings (1)").click();
    s.harness.run_steps(2);
    s.harness.get_by_label("tinystyle").click();
    s.harness.step();
    assert_eq!(s.harness.state().settings.params.prompt, "a cat, tinystyle");
}

#[test]
fn image_to_image_from_the_canvas_and_from_a_dropped_picture() {
    let mut s = studio("img2img", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    // Image mode without a picture says what to do and sends nothing.
    s.harness.get_by_label("Image to image").click();
    s.harness.step();
    s.harness.get_by_label("Generate").click();
    s.harness.step();
    assert!(said(&s, "needs a picture"));
    assert!(s.log.lock().expect("log").requests.is_empty());
    // A text-to-image result sent to img2img.
    s.harness.get_by_label("Text to image").click();
    s.type_prompt("a red apple");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("finished", |a, _| a.session.history.first().is_some_and(|h| h.full.is_some()));
    s.harness.get_by_label("To img2img").click();
    s.harness.step();
    assert_eq!(s.harness.state().settings.params.mode, latent_studio::gui::state::GenMode::Image);
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("the img2img request", |_, log| log.requests.len() >= 2);
    let r = s.log.lock().expect("log").requests[1].clone();
    let init = r.init_image.expect("init image sent");
    assert_eq!((init.width, init.height), (r.width, r.height));
    assert_eq!(r.strength, 0.75);
    // In image mode a dropped picture becomes the init picture (settings untouched).
    s.until("idle", |a, _| !a.session.is_busy());
    drop_png(
        &mut s,
        "green.png",
        "a green field\nSteps: 30, Sampler: Euler, CFG scale: 5, Seed: 9, Size: 8x8",
    );
    let state = s.harness.state();
    assert_eq!(state.settings.params.prompt, "a red apple");
    let init = state.session.init.as_ref().expect("init");
    assert_eq!((init.image.width, init.image.height), (8, 8));
    assert_eq!(&init.image.pixels[..3], &[0, 200, 0]);
}

#[test]
fn inpaint_mode_paints_a_mask_with_the_brush_and_sends_it() {
    let mut s = studio("inpaint", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    s.type_prompt("a red apple");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("finished", |a, _| a.session.history.first().is_some_and(|h| h.full.is_some()));
    s.harness.get_by_label("To img2img").click();
    s.harness.step();
    s.harness.get_by_label("Inpaint").click();
    s.harness.step();
    // Nothing painted yet: Generate says so and sends nothing.
    s.until("idle", |a, _| !a.session.is_busy());
    s.harness.get_by_label("Generate").click();
    s.harness.step();
    assert!(said(&s, "Paint the mask first"));
    assert_eq!(s.log.lock().expect("log").requests.len(), 1);
    // Paint a stroke in the mask editor.
    s.harness.get_by_label("Edit mask…").click();
    s.harness.run_steps(2);
    let below = s.harness.get_by_label("Invert").rect().left_bottom();
    let (a, b) = (below + egui::vec2(60.0, 80.0), below + egui::vec2(200.0, 90.0));
    s.harness.hover_at(a);
    s.harness.step();
    s.harness.drag_at(a);
    s.harness.step();
    for k in 1..=8 {
        s.harness.hover_at(a + (b - a) * (k as f32 / 8.0));
        s.harness.step();
    }
    s.harness.drop_at(b);
    s.harness.step();
    let painted = s.harness.state().session.init.as_ref().expect("init").painted();
    assert!(painted > 0.02 && painted < 0.6, "painted share {painted}");
    s.snapshot("mask-editor");
    // Generate sends the picture and the mask, both at the request's size.
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("the inpaint request", |_, log| log.requests.len() >= 2);
    let r = s.log.lock().expect("log").requests[1].clone();
    let mask = r.mask.expect("mask sent");
    assert_eq!((mask.width, mask.height), (r.width, r.height));
    assert!(mask.pixels.contains(&255) && mask.pixels.contains(&0));
    assert!(r.init_image.is_some());
    // Saved with the picture and the mask beside it; the history item restores them.
    s.until("saved", |a, _| {
        a.session.history.first().is_some_and(|h| h.path.is_some() && h.job.is_some()) && !a.session.is_busy()
    });
    s.until("both saved", |a, _| {
        a.session.history.len() >= 2 && a.session.history[0].path.is_some()
    });
    let saved = s.harness.state().session.history[0].path.clone().expect("saved");
    let (init_file, mask_file) = (
        latent_engine::image_io::sidecar(&saved, "init"),
        latent_engine::image_io::sidecar(&saved, "mask"),
    );
    assert!(
        init_file.is_file() && mask_file.is_file(),
        "{} / {}",
        init_file.display(),
        mask_file.display()
    );
    s.harness.get_by_label("Text to image").click();
    s.harness.step();
    s.harness.state_mut().session.init = None;
    s.harness.state_mut().select_history(0);
    s.harness.step();
    let state = s.harness.state();
    assert_eq!(state.settings.params.mode, latent_studio::gui::state::GenMode::Inpaint);
    let init = state.session.init.as_ref().expect("init restored");
    assert!(init.painted() > 0.02, "mask restored");
    let own = (init.image.width, init.image.height);
    // "Only masked" sends the picture and the mask at their own size (the engine cuts the
    // crop), with the area and the padding.
    let _ = s.harness.get_by_label("Only masked");
    s.harness.state_mut().settings.params.inpaint_area = latent_engine::protocol::InpaintArea::Masked;
    s.harness.state_mut().settings.params.width = own.0 * 2;
    s.harness.step();
    s.until("idle", |a, _| !a.session.is_busy());
    let n = s.log.lock().expect("log").requests.len();
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("the only-masked request", |_, log| log.requests.len() > n);
    let r = s.log.lock().expect("log").requests[n].clone();
    assert_eq!(
        (r.inpaint_area, r.masked_padding),
        (latent_engine::protocol::InpaintArea::Masked, 32)
    );
    assert_eq!(r.width, own.0 * 2);
    let (img, mask) = (r.init_image.expect("picture"), r.mask.expect("mask"));
    assert_eq!(((img.width, img.height), (mask.width, mask.height)), (own, own));
    // The mask editor draws the region the engine cuts out, the same the engine computes.
    s.harness.state_mut().session.show_mask_editor = true;
    s.harness.run_steps(2);
    let p = s.harness.state().settings.params.clone();
    let want = latent_engine::pipeline::masked_area::region_of_mask(&mask, p.mask_blur, p.masked_padding, p.width, p.height);
    let drawn = s.harness.state().session.init.as_ref().and_then(|i| i.region);
    assert!(want.is_some());
    assert_eq!(drawn.map(|(_, r)| r), Some(want));
    let _ = s.harness.get_by_label_contains("Only masked:");
}

#[test]
fn outpaint_buttons_extend_the_picture_and_mask_the_border() {
    let mut s = studio("outpaint", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    s.harness.state_mut().set_init(Arc::new(picture(80, 64, 1)), "test picture".into());
    s.harness.get_by_label("Inpaint").click();
    s.harness.step();
    s.harness.state_mut().session.outpaint_by = 16;
    s.harness.step();
    s.harness.get_by_label("right").click();
    s.harness.step();
    let st = s.harness.state();
    let init = st.session.init.as_ref().expect("init");
    assert_eq!((init.image.width, init.image.height), (96, 64));
    // The right border is to paint, the picture kept; its pixels are unchanged.
    let at = |x: u32, y: u32| init.mask[(y * 96 + x) as usize];
    assert_eq!((at(79, 10), at(80, 10), at(95, 63)), (0, 255, 255));
    assert_eq!(&init.image.pixels[..3], &picture(80, 64, 1).pixels[..3]);
    assert_eq!((st.settings.params.width, st.settings.params.height), (96, 64));
    assert_eq!(st.settings.params.mode, latent_studio::gui::state::GenMode::Inpaint);
    s.harness.get_by_label("all").click();
    s.harness.step();
    let init = s.harness.state().session.init.as_ref().expect("init");
    assert_eq!((init.image.width, init.image.height), (128, 96));
}

#[test]
fn a_picture_with_transparent_pixels_opens_with_them_as_the_mask() {
    let mut s = studio("alpha-mask", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    s.harness.get_by_label("Image to image").click();
    s.harness.step();
    // The right half transparent.
    let png = s.out.join("holes.png");
    let rgba = image::RgbaImage::from_fn(20, 10, |x, _| image::Rgba([200, 10, 10, if x < 10 { 255 } else { 0 }]));
    rgba.save(&png).expect("write");
    s.harness.input_mut().dropped_files.push(Arc::new(Dropped(png)));
    s.harness.step();
    s.harness.step();
    let st = s.harness.state();
    let init = st.session.init.as_ref().expect("init");
    assert_eq!((init.image.width, init.image.height), (20, 10));
    assert!((init.painted() - 0.5).abs() < 1e-6, "{}", init.painted());
    assert_eq!((init.mask[9], init.mask[10]), (0, 255));
    assert_eq!(st.settings.params.mode, latent_studio::gui::state::GenMode::Inpaint);
    assert!(said(&s, "transparent pixels are the mask"));
    // Paste takes the clipboard's picture; with none (no display here) it says so.
    s.harness.get_by_label("Paste").click();
    s.harness.step();
    let pasted = s
        .harness
        .state()
        .session
        .init
        .as_ref()
        .is_some_and(|i| i.name == "the pasted picture");
    assert!(pasted || said(&s, "No picture on the clipboard"));
}

#[test]
fn upscale_enlarges_the_image_on_the_canvas_into_the_history() {
    let root = temp_dir("upscale-root");
    let dir = root.join("models/ESRGAN");
    std::fs::create_dir_all(&dir).expect("dir");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/upscale/esrgan-x2.safetensors");
    std::fs::copy(&fixture, dir.join("esrgan-x2.safetensors")).expect("copy");
    let mut settings = settings();
    settings.model_dirs = vec![root.clone()];
    let mut s = studio("upscale", settings, Some("/models/fake.safetensors"));
    s.loaded();
    s.type_prompt("a red apple");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("finished", |a, _| {
        a.session.history.first().is_some_and(|h| h.full.is_some()) && !a.session.is_busy()
    });
    let [w, h] = s.harness.state().session.history[0].size;
    s.harness.get_by_label("Upscale").click();
    s.harness.run_steps(2);
    s.harness.get_by_label("esrgan-x2").click();
    s.until("upscaled", |a, _| a.session.history.len() == 2 && !a.session.is_busy());
    let st = s.harness.state();
    let item = &st.session.history[0];
    assert_eq!(item.size, [w * 2, h * 2]);
    assert!(item.parameters.starts_with("a red apple"), "{}", item.parameters);
    assert!(item.parameters.contains("Postprocess upscaler: esrgan-x2"), "{}", item.parameters);
    assert_eq!(s.log.lock().expect("log").requests.len(), 1, "no generation was sent for it");
    s.until("saved", |a, _| a.session.history[0].path.is_some());
}

#[test]
fn the_hires_fix_reaches_the_request_and_the_cost_line() {
    let mut s = studio("hires", settings(), Some("/models/fake.safetensors"));
    s.loaded();
    s.harness.get_by_label("Hires fix").click();
    s.harness.run_steps(2);
    // 6 steps with CFG (12) plus int(6 x 0.7) = 4 hires steps with CFG (8).
    assert!(s.harness.query_by_label("Cost: 20 network evaluations").is_some());
    s.type_prompt("a red apple");
    s.harness.key_press_modifiers(egui::Modifiers::COMMAND, egui::Key::Enter);
    s.until("the engine received the request", |_, log| !log.requests.is_empty());
    let h = s.log.lock().expect("log").requests[0].hires.clone().expect("hires");
    assert_eq!((h.scale, h.steps, h.strength), (2.0, 0, 0.7));
}

/// File > Connect to server: the window's jobs run on a `serve` (here on this machine, with
/// a token), with previews and history as on the local engine and the same pixels; a wrong
/// token is said in the dialog; Disconnect comes back to the local engine.
#[test]
fn the_window_drives_a_remote_server() {
    let server = latent_studio::server::start(latent_studio::server::ServeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        tokens: vec!["sesame".into()],
        ..Default::default()
    })
    .expect("the server starts");
    let addr = server.addr.to_string();
    let mut st = Settings::default();
    st.params.prompt = "a blue heart on a white background".into();
    st.params.seed = 9;
    st.params.seed_mode = SeedMode::Fixed;
    st.params.steps = 6;
    let mut h = real_studio("remote", st);
    real_until(&mut h, "model loaded", |a| matches!(a.session.model, ModelState::Loaded { .. }));
    let done = |n: usize| move |a: &StudioApp| a.session.history.len() == n && a.session.jobs.is_empty();
    h.state_mut().generate();
    real_until(&mut h, "the local image", done(1));

    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_role_and_label(egui::accesskit::Role::Button, "Connect to server…").click();
    h.run_steps(2);
    assert!(h.state().session.remote.show, "the Connect window opens");
    assert_eq!(
        h.state().session.remote.url,
        "http://127.0.0.1:7860",
        "the usual address is offered"
    );
    h.state_mut().session.remote.url.clear();
    h.run_steps(2);
    let address = h.get_by_role_and_label(egui::accesskit::Role::TextInput, "Address");
    address.focus();
    address.type_text(&format!("http://{addr}"));
    h.run_steps(2);
    h.get_by_label("Connect").click();
    real_until(&mut h, "refused", |a| a.session.remote.error.is_some());
    let error = h.state().session.remote.error.clone().unwrap_or_default();
    assert!(error.contains("refused the credentials"), "{error}");
    assert!(
        h.query_all_by_label_contains("refused the credentials").count() >= 2,
        "the dialog says so (and the messages)"
    );

    h.state_mut().session.remote.token = "sesame".into();
    h.get_by_label("Connect").click();
    real_until(&mut h, "connected and loaded", |a| {
        a.session.remote.connected.is_some() && matches!(&a.session.model, ModelState::Loaded { info, .. } if info.device.contains(&addr))
    });
    assert!(
        h.state()
            .session
            .found_models
            .iter()
            .any(|m| m.to_string_lossy() == "latent-studio-default.safetensors"),
        "the server's models fill the picker: {:?}",
        h.state().session.found_models
    );
    h.run_steps(3);
    assert!(
        h.query_all_by_label_contains(&format!("on http://{addr} ·")).count() > 0,
        "the status bar names the server"
    );
    h.get_by_label("Generate").click();
    real_until(&mut h, "the remote image", done(2));
    assert!(!h.state().session.strip.is_empty(), "previews came through");
    let (remote, local) = (&h.state().session.history[0], &h.state().session.history[1]);
    assert_eq!(remote.parameters, local.parameters);
    assert!(remote.full.as_ref().expect("pixels").pixels == local.full.as_ref().expect("pixels").pixels);
    real_until(&mut h, "saved here like any image", |a| {
        a.session.history[0].path.as_ref().is_some_and(|p| p.is_file())
    });

    h.get_by_label("File").click();
    h.run_steps(2);
    h.get_by_role_and_label(egui::accesskit::Role::Button, "Disconnect from server")
        .click();
    real_until(&mut h, "local again", |a| {
        a.session.remote.connected.is_none() && matches!(&a.session.model, ModelState::Loaded { info, .. } if !info.device.contains(&addr))
    });
    server.stop();
}

/// The NFE budget: ticking it fixes the cost instead of the steps; the request carries the
/// most steps the solver can take within it, the cost line says so, a budget that buys no
/// step is said and nothing is sent, and restoring an image gives its own steps back.
#[test]
fn an_nfe_budget_sets_the_steps_the_solver_can_afford() {
    let mut st = settings();
    st.params.solver = "heun".into();
    let mut s = studio("nfe-budget", st, Some("/models/fake.safetensors"));
    s.loaded();
    s.harness
        .get_by_role_and_label(egui::accesskit::Role::CheckBox, "NFE budget")
        .click();
    s.harness.run_steps(2);
    // Ticking it starts at twice the steps (6).
    assert_eq!(s.harness.state().settings.params.nfe_budget, Some(12));
    s.harness.state_mut().settings.params.nfe_budget = Some(12);
    s.harness.run_steps(2);
    // 3 Heun steps with CFG cost 10; 4 would cost 14.
    assert!(
        s.harness
            .query_by_label_contains("Budget 12: 3 steps · Cost: 10 network evaluations")
            .is_some()
    );
    s.harness.get_by_label("Generate").click();
    s.until("the engine received the request", |_, log| !log.requests.is_empty());
    assert_eq!(s.log.lock().expect("log").requests[0].steps, 3);
    s.until("finished", |a, _| a.session.jobs.is_empty() && !a.session.history.is_empty());
    s.harness.state_mut().settings.params.nfe_budget = Some(1);
    s.harness.run_steps(2);
    assert!(
        s.harness.query_by_label_contains("buys no step of heun").is_some(),
        "said beside the sliders"
    );
    s.harness.get_by_label("Generate").click();
    s.harness.run_steps(3);
    assert_eq!(s.log.lock().expect("log").requests.len(), 1, "nothing sent");
    assert!(said(&s, "buys no step"));
    // Restoring the image: its 3 steps, the budget off.
    s.harness.state_mut().select_history(0);
    let p = &s.harness.state().settings.params;
    assert_eq!((p.steps, p.nfe_budget), (3, None));
}

/// View > Solver lab on the real engine and the embedded model: the comparison runs as one
/// engine job, its cells fill the grid (labelled with steps, NFE, distance) as they arrive,
/// the main canvas and history are left alone.
#[test]
fn the_solver_lab_compares_solvers_at_equal_nfe() {
    let mut st = Settings::default();
    st.params.prompt = "a green circle on a white background".into();
    st.params.seed = 3;
    st.params.seed_mode = SeedMode::Fixed;
    let mut h = real_studio("lab", st);
    real_until(&mut h, "model loaded", |a| matches!(a.session.model, ModelState::Loaded { .. }));
    h.get_by_label("View").click();
    h.run_steps(2);
    h.get_by_label("Solver lab").click();
    h.run_steps(2);
    {
        let lab = &mut h.state_mut().session.lab;
        lab.solvers = vec!["euler".into(), "unipc".into()];
        lab.budgets = "4, 16".into();
        lab.reference_steps = 40;
    }
    h.run_steps(2);
    h.get_by_label("Compare").click();
    real_until(&mut h, "the comparison", |a| {
        a.session.lab.job.is_none() && a.session.lab.cells.len() == 4
    });
    let lab = &h.state().session.lab;
    assert!(lab.error.is_none(), "{:?}", lab.error);
    assert!(lab.reference.is_some());
    for (c, tex) in &lab.cells {
        assert!(tex.is_some() && c.nfe == c.budget && c.latent_rel_l2.is_finite(), "{c:?}");
    }
    let at = |s: &str, b: u32| {
        lab.cells
            .iter()
            .find(|(c, _)| c.solver == s && c.budget == b)
            .expect("cell")
            .0
            .latent_rel_l2
    };
    assert!(at("unipc", 16) < at("unipc", 4) && at("euler", 16) < at("euler", 4));
    h.run_steps(3);
    assert_eq!(
        h.query_all_by_label_contains("8 steps · 16 NFE").count(),
        2,
        "the grid labels the cells (euler, unipc)"
    );
    assert!(h.state().session.history.is_empty(), "comparisons stay out of the history");
    // Save: the report in a new folder of the output folder, twice = two folders.
    for n in ["solver-lab-001", "solver-lab-002"] {
        h.get_by_label("Save").click();
        real_until(&mut h, "saved", |a| a.session.messages.iter().any(|m| m.text.contains(n)));
        let dir = h.state().settings.output_dir.join(n);
        for f in [
            "grid.png",
            "compare.csv",
            "convergence.svg",
            "cells/unipc_nfe16.png",
            "cells/reference.png",
        ] {
            assert!(dir.join(f).is_file(), "{n}/{f}");
        }
        let csv = std::fs::read_to_string(dir.join("compare.csv")).expect("csv");
        assert_eq!(csv.lines().count(), 5, "{csv}");
    }
    // A budget that is not a number: said, nothing sent.
    h.state_mut().session.lab.budgets = "4, lots".into();
    h.get_by_label("Compare").click();
    h.run_steps(2);
    assert!(h.state().session.lab.error.as_deref().is_some_and(|e| e.contains("lots")));
    assert!(h.state().session.lab.job.is_none());
}

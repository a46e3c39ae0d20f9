//! The engine thread: owns the loaded model, takes commands, emits events.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::error::{EngineError, Result};
use crate::lora::{LoraFile, LoraReport, extract_prompt_tags};
use crate::pipeline::{Hooks, Output, Pipeline};
use crate::protocol::{Command, CompareRequest, Event, GenerateRequest, ImageRgb8, JobId, LoraSpec, ModelInfo, ModelSpec, UpscaleRequest};

/// What the worker drives: the real pipeline, or a stand-in in tests and UI development.
pub trait Backend: Send {
    /// Loads a model, replacing the current one only on success.
    fn load_model(&mut self, spec: &ModelSpec) -> Result<ModelInfo>;
    /// Validates a request; returns (total steps, network evaluations) it will take.
    fn prepare(&self, request: &GenerateRequest) -> Result<(u32, u32)>;
    /// Runs a prepared request.
    fn generate(&mut self, request: &GenerateRequest, hooks: &mut dyn Hooks) -> Result<Output>;
    /// Replaces the LoRA set of the panel; returns one report per file.
    fn set_loras(&mut self, _loras: &[LoraSpec]) -> Result<Vec<LoraReport>> {
        Err(EngineError::Other("this engine has no LoRA support".into()))
    }
    /// Validates an upscale job; returns its tiles (its progress steps).
    fn prepare_upscale(&self, request: &UpscaleRequest) -> Result<u32> {
        crate::pipeline::prepare_upscale(request)
    }
    /// Runs an upscale job (on the CPU unless the backend has a device of its own).
    fn upscale(&mut self, request: &UpscaleRequest, hooks: &mut dyn Hooks) -> Result<Output> {
        crate::pipeline::run_upscale(request, &candle_core::Device::Cpu, hooks)
    }
    /// Validates a solver comparison; returns its steps (all runs) and NFE.
    fn prepare_compare(&self, _request: &CompareRequest) -> Result<(u32, u32)> {
        Err(EngineError::Other("this engine cannot compare solvers".into()))
    }
    /// Runs a solver comparison: `hooks.cell` per cell; the output is the reference run's.
    fn compare(&mut self, _request: &CompareRequest, _hooks: &mut dyn Hooks) -> Result<Output> {
        Err(EngineError::Other("this engine cannot compare solvers".into()))
    }
}

/// One LoRA in effect: file, UNet strength, text-encoder strength.
type Applied = (PathBuf, f32, f32);

/// The real backend: at most one loaded [`Pipeline`], the LoRA panel, and LoRA files read so
/// far (kept in memory: strength changes never touch the disk).
#[derive(Default)]
pub struct PipelineBackend {
    pipeline: Option<Pipeline>,
    panel: Vec<LoraSpec>,
    cache: HashMap<PathBuf, LoraFile>,
    applied: Vec<Applied>,
    lora_dirs: Vec<PathBuf>,
    embedding_dirs: Vec<PathBuf>,
}

/// Finds `<name>.safetensors` (case-insensitive) in `dirs` and their subfolders.
fn find_lora(name: &str, dirs: &[PathBuf]) -> Option<PathBuf> {
    fn walk(dir: &Path, name: &str, depth: usize) -> Option<PathBuf> {
        let entries = std::fs::read_dir(dir).ok()?;
        let mut subdirs = vec![];
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                subdirs.push(p);
            } else if p
                .extension()
                .and_then(|x| x.to_str())
                .is_some_and(|x| x.eq_ignore_ascii_case("safetensors"))
                && p.file_stem().and_then(|x| x.to_str()).is_some_and(|s| s.eq_ignore_ascii_case(name))
            {
                return Some(p);
            }
        }
        if depth == 0 {
            return None;
        }
        subdirs.sort();
        subdirs.iter().find_map(|d| walk(d, name, depth - 1))
    }
    dirs.iter().find_map(|d| walk(d, name, 3))
}

/// Where a model's embeddings are looked for: the configured folders, then an `embeddings`
/// folder beside the checkpoint and up to two levels above it (A1111's `embeddings/` beside
/// `models/`, ComfyUI's `models/embeddings` beside `models/checkpoints`).
pub fn embedding_dirs_for(model: &Path, configured: &[PathBuf]) -> Vec<PathBuf> {
    let mut dirs = configured.to_vec();
    let mut up = model.parent();
    for _ in 0..3 {
        let Some(d) = up else { break };
        let e = d.join("embeddings");
        if e.is_dir() && !dirs.contains(&e) {
            dirs.push(e);
        }
        up = d.parent();
    }
    dirs
}

impl PipelineBackend {
    /// A backend that resolves `<lora:name>` prompt tags in `lora_dirs`.
    pub fn new(lora_dirs: Vec<PathBuf>) -> Self {
        Self {
            lora_dirs,
            ..Default::default()
        }
    }

    /// Also looks for textual-inversion embeddings in `dirs`.
    pub fn with_embedding_dirs(mut self, dirs: Vec<PathBuf>) -> Self {
        self.embedding_dirs = dirs;
        self
    }

    /// Panel LoRAs plus the prompt's tags (a tag overrides the panel's strength for its file).
    fn effective(&self, prompt: &str) -> Result<Vec<Applied>> {
        let mut set: Vec<Applied> = self
            .panel
            .iter()
            .map(|l| (l.path.clone(), l.strength, l.text_strength.unwrap_or(l.strength)))
            .collect();
        let (_, tags) = extract_prompt_tags(prompt);
        let mut dirs = self.lora_dirs.clone();
        dirs.extend(self.panel.iter().filter_map(|l| l.path.parent().map(Path::to_path_buf)));
        for (name, w) in tags {
            let path = find_lora(&name, &dirs).ok_or_else(|| {
                let shown: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
                EngineError::InvalidRequest(format!(
                    "LoRA '{name}' from the prompt was not found (looked in: {})",
                    if shown.is_empty() {
                        "no LoRA folders configured".into()
                    } else {
                        shown.join(", ")
                    }
                ))
            })?;
            set.retain(|(p, _, _)| *p != path);
            set.push((path, w, w));
        }
        Ok(set)
    }

    /// Merges `set` if it differs from what is merged now.
    fn ensure(&mut self, set: Vec<Applied>) -> Result<Option<Vec<LoraReport>>> {
        if set == self.applied {
            return Ok(None);
        }
        for (path, _, _) in &set {
            if !self.cache.contains_key(path) {
                let f = LoraFile::open(path)?;
                self.cache.insert(path.clone(), f);
            }
        }
        let pipe = self.pipeline.as_mut().ok_or(EngineError::NoModel)?;
        let loras: Vec<(&LoraFile, f32, f32)> = set.iter().filter_map(|(p, u, t)| self.cache.get(p).map(|f| (f, *u, *t))).collect();
        let reports = pipe.apply_loras(&loras)?;
        self.applied = set;
        Ok(Some(reports))
    }
}

impl Backend for PipelineBackend {
    fn load_model(&mut self, spec: &ModelSpec) -> Result<ModelInfo> {
        // Build the new model before dropping the old one: a failed load keeps serving.
        let mut p = Pipeline::load(spec)?;
        p.embedding_dirs = embedding_dirs_for(&spec.path, &self.embedding_dirs);
        let info = p.info();
        self.pipeline = Some(p);
        // The new model starts without LoRAs; the panel's set is merged at the next job.
        self.applied.clear();
        Ok(info)
    }
    fn prepare(&self, request: &GenerateRequest) -> Result<(u32, u32)> {
        let p = self.pipeline.as_ref().ok_or(EngineError::NoModel)?;
        let job = p.validate(request)?;
        self.effective(&request.prompt)?;
        Ok((request.steps, p.nfe(&job)))
    }
    fn generate(&mut self, request: &GenerateRequest, hooks: &mut dyn Hooks) -> Result<Output> {
        for tag in crate::lora::prompt_tags(&request.prompt).invalid {
            hooks.warning(format!("{tag}: the strength is not a number, so this LoRA is left off"));
        }
        let set = self.effective(&request.prompt)?;
        if let Some(reports) = self.ensure(set)? {
            for r in reports.iter().filter(|r| !r.unmatched.is_empty()) {
                hooks.warning(r.summary());
            }
        }
        let p = self.pipeline.as_ref().ok_or(EngineError::NoModel)?;
        let job = p.validate(request)?;
        p.generate(&job, hooks)
    }
    fn prepare_compare(&self, request: &CompareRequest) -> Result<(u32, u32)> {
        let p = self.pipeline.as_ref().ok_or(EngineError::NoModel)?;
        crate::pipeline::compare::plan(p, request)
    }
    fn compare(&mut self, request: &CompareRequest, hooks: &mut dyn Hooks) -> Result<Output> {
        // The panel's LoRAs apply as to any generation.
        let set = self.effective(&request.base.prompt)?;
        self.ensure(set)?;
        let p = self.pipeline.as_ref().ok_or(EngineError::NoModel)?;
        let started = std::time::Instant::now();
        let c = crate::pipeline::compare::compare(p, request, hooks)?;
        let mut out = c.reference;
        out.timings.nfe += c.cells.iter().map(|c| c.nfe).sum::<u32>();
        out.timings.total = started.elapsed();
        Ok(out)
    }
    fn upscale(&mut self, request: &UpscaleRequest, hooks: &mut dyn Hooks) -> Result<Output> {
        // The loaded model's device (a GPU when there is one), else the CPU.
        let device = self.pipeline.as_ref().map_or(candle_core::Device::Cpu, |p| p.device().clone());
        crate::pipeline::run_upscale(request, &device, hooks)
    }
    fn set_loras(&mut self, loras: &[LoraSpec]) -> Result<Vec<LoraReport>> {
        let previous = std::mem::replace(&mut self.panel, loras.to_vec());
        let set = self.effective("")?;
        if self.pipeline.is_none() {
            return Ok(vec![]);
        }
        match self.ensure(set) {
            Ok(reports) => Ok(reports.unwrap_or_default()),
            Err(e) => {
                self.panel = previous;
                Err(e)
            }
        }
    }
}

/// Cancellation shared by the handle and the worker. The handle flips the running job's
/// atomic flag directly, so cancel never waits behind the job in the command queue.
#[derive(Default)]
pub struct CancelBoard {
    /// Id of the running job plus one (0: none).
    running: AtomicU64,
    flag: AtomicBool,
    requested: Mutex<HashSet<JobId>>,
    shutting_down: AtomicBool,
}

impl CancelBoard {
    /// Requests cancellation of `id`, running or queued.
    pub fn cancel(&self, id: JobId) {
        if let Ok(mut r) = self.requested.lock() {
            r.insert(id);
        }
        if self.running.load(Ordering::SeqCst) == id.wrapping_add(1) {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
    /// Cancels everything, now and later: the engine is stopping.
    pub fn shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.flag.store(true, Ordering::SeqCst);
    }
    fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
    fn start(&self, id: JobId) -> bool {
        self.running.store(id.wrapping_add(1), Ordering::SeqCst);
        let requested = self.is_shutting_down() || self.requested.lock().map(|r| r.contains(&id)).unwrap_or(false);
        self.flag.store(requested, Ordering::SeqCst);
        requested
    }
    fn finish(&self, id: JobId) {
        self.running.store(0, Ordering::SeqCst);
        self.flag.store(false, Ordering::SeqCst);
        if let Ok(mut r) = self.requested.lock() {
            r.remove(&id);
        }
    }
    /// True when the running job should stop.
    pub fn is_cancelled(&self) -> bool {
        self.flag.load(Ordering::SeqCst) || self.is_shutting_down()
    }
}

/// Called after each event so a window can repaint.
pub type Waker = Arc<dyn Fn() + Send + Sync>;

pub(crate) struct Worker {
    pub backend: Box<dyn Backend>,
    pub commands: Receiver<Command>,
    pub events: Sender<Event>,
    pub board: Arc<CancelBoard>,
    pub waker: Waker,
}

/// The receiving side is gone: the window closed, stop serving.
struct Disconnected;

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

impl Worker {
    fn emit(&self, e: Event) -> std::result::Result<(), Disconnected> {
        self.events.send(e).map_err(|_| Disconnected)?;
        (self.waker)();
        Ok(())
    }

    pub fn run(mut self) {
        while let Ok(cmd) = self.commands.recv() {
            if self.board.is_shutting_down() {
                break;
            }
            let r = match cmd {
                Command::LoadModel(spec) => self.load(&spec),
                Command::Generate { id, request } => self.job(id, &request),
                Command::Upscale { id, request } => self.upscale(id, &request),
                Command::Compare { id, request } => {
                    self.run_job(id, 0, false, |b| b.prepare_compare(&request), |b, hooks| b.compare(&request, hooks))
                }
                Command::SetLoras(list) => self.set_loras(&list),
                Command::Cancel(id) => {
                    self.board.cancel(id);
                    Ok(())
                }
                Command::Shutdown => break,
            };
            if r.is_err() {
                break;
            }
        }
    }

    fn load(&mut self, spec: &ModelSpec) -> std::result::Result<(), Disconnected> {
        let result = catch_unwind(AssertUnwindSafe(|| self.backend.load_model(spec)));
        match result {
            Ok(Ok(info)) => self.emit(Event::ModelLoaded { info }),
            Ok(Err(e)) => self.emit(Event::Failed {
                id: None,
                error: e.to_string(),
            }),
            Err(p) => self.emit(Event::Failed {
                id: None,
                error: format!("internal error while loading (the engine recovered): {}", panic_message(&*p)),
            }),
        }
    }

    fn set_loras(&mut self, list: &[LoraSpec]) -> std::result::Result<(), Disconnected> {
        match catch_unwind(AssertUnwindSafe(|| self.backend.set_loras(list))) {
            Ok(Ok(reports)) => {
                for r in reports.iter().filter(|r| !r.unmatched.is_empty()) {
                    self.emit(Event::Warning {
                        id: None,
                        message: r.summary(),
                    })?;
                }
                self.emit(Event::LorasApplied { reports })
            }
            Ok(Err(e)) => self.emit(Event::Failed {
                id: None,
                error: e.to_string(),
            }),
            Err(p) => self.emit(Event::Failed {
                id: None,
                error: format!("internal error while applying LoRAs (the engine recovered): {}", panic_message(&*p)),
            }),
        }
    }

    fn job(&mut self, id: JobId, request: &GenerateRequest) -> std::result::Result<(), Disconnected> {
        self.run_job(
            id,
            request.preview_every,
            true,
            |b| b.prepare(request),
            |b, hooks| b.generate(request, hooks),
        )
    }

    fn upscale(&mut self, id: JobId, request: &UpscaleRequest) -> std::result::Result<(), Disconnected> {
        self.run_job(
            id,
            0,
            false,
            |b| b.prepare_upscale(request).map(|tiles| (tiles, 0)),
            |b, hooks| b.upscale(request, hooks),
        )
    }

    /// One job's life: cancelled while queued, refused by `prepare`, or started, run and
    /// ended by exactly one final event; a panic inside is reported and the worker serves on.
    fn run_job(
        &mut self,
        id: JobId,
        every: u32,
        keep_latents: bool,
        prepare: impl FnOnce(&dyn Backend) -> Result<(u32, u32)>,
        run: impl FnOnce(&mut dyn Backend, &mut dyn Hooks) -> Result<Output>,
    ) -> std::result::Result<(), Disconnected> {
        if self.board.start(id) {
            self.board.finish(id);
            return self.emit(Event::Cancelled { id, at_step: 0 });
        }
        let backend: &dyn Backend = &*self.backend;
        let prepared = catch_unwind(AssertUnwindSafe(|| prepare(backend)));
        let (total_steps, nfe) = match prepared {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                self.board.finish(id);
                return self.emit(Event::Failed {
                    id: Some(id),
                    error: e.to_string(),
                });
            }
            Err(p) => {
                self.board.finish(id);
                return self.emit(Event::Failed {
                    id: Some(id),
                    error: format!("internal error (the engine recovered): {}", panic_message(&*p)),
                });
            }
        };
        self.emit(Event::Started { id, total_steps, nfe })?;
        let mut hooks = EventHooks {
            id,
            worker_events: &self.events,
            board: &self.board,
            waker: &self.waker,
            every,
            disconnected: false,
        };
        let backend: &mut dyn Backend = &mut *self.backend;
        let result = catch_unwind(AssertUnwindSafe(|| run(backend, &mut hooks)));
        let disconnected = hooks.disconnected;
        self.board.finish(id);
        if disconnected {
            return Err(Disconnected);
        }
        let last = match result {
            Ok(Ok(out)) => Event::Finished {
                id,
                image: out.image,
                metadata: out.metadata,
                timings: out.timings,
                latents: keep_latents.then_some(out.latents),
            },
            Ok(Err(EngineError::Cancelled { at_step })) => Event::Cancelled { id, at_step },
            Ok(Err(e)) => Event::Failed {
                id: Some(id),
                error: e.to_string(),
            },
            Err(p) => Event::Failed {
                id: Some(id),
                error: format!("internal error (the engine recovered): {}", panic_message(&*p)),
            },
        };
        self.emit(last)
    }
}

struct EventHooks<'a> {
    id: JobId,
    worker_events: &'a Sender<Event>,
    board: &'a CancelBoard,
    waker: &'a Waker,
    every: u32,
    disconnected: bool,
}

impl Hooks for EventHooks<'_> {
    fn cancelled(&self) -> bool {
        self.disconnected || self.board.is_cancelled()
    }
    fn progress(&mut self, step: u32, total_steps: u32, step_time: Duration) {
        if self
            .worker_events
            .send(Event::Progress {
                id: self.id,
                step,
                total_steps,
                step_time,
            })
            .is_err()
        {
            self.disconnected = true;
            return;
        }
        (self.waker)();
    }
    fn warning(&mut self, message: String) {
        if self
            .worker_events
            .send(Event::Warning {
                id: Some(self.id),
                message,
            })
            .is_err()
        {
            self.disconnected = true;
            return;
        }
        (self.waker)();
    }
    fn cell(&mut self, cell: &crate::protocol::CompareCell) {
        if self
            .worker_events
            .send(Event::CompareCell {
                id: self.id,
                cell: Box::new(cell.clone()),
            })
            .is_err()
        {
            self.disconnected = true;
            return;
        }
        (self.waker)();
    }
    fn wants_preview(&self, step: u32) -> bool {
        self.every > 0 && step.is_multiple_of(self.every) && !self.worker_events.is_full()
    }
    fn preview(&mut self, step: u32, image: ImageRgb8) {
        // Previews are droppable: a slow window skips some rather than slowing the engine.
        match self.worker_events.try_send(Event::Preview { id: self.id, step, image }) {
            Ok(()) => (self.waker)(),
            Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => self.disconnected = true,
        }
    }
}

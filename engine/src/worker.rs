//! The engine thread: owns the loaded model, takes commands, emits events.

use std::collections::HashSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::{EngineError, Result};
use crate::pipeline::{Hooks, Output, Pipeline};
use crate::protocol::{Command, Event, GenerateRequest, ImageRgb8, JobId, ModelInfo, ModelSpec};

/// What the worker drives: the real pipeline, or a stand-in in tests and UI development.
pub trait Backend: Send {
    /// Loads a model, replacing the current one only on success.
    fn load_model(&mut self, spec: &ModelSpec) -> Result<ModelInfo>;
    /// Validates a request; returns (total steps, network evaluations) it will take.
    fn prepare(&self, request: &GenerateRequest) -> Result<(u32, u32)>;
    /// Runs a prepared request.
    fn generate(&mut self, request: &GenerateRequest, hooks: &mut dyn Hooks) -> Result<Output>;
}

/// The real backend: at most one loaded [`Pipeline`].
#[derive(Default)]
pub struct PipelineBackend {
    pipeline: Option<Pipeline>,
}

impl Backend for PipelineBackend {
    fn load_model(&mut self, spec: &ModelSpec) -> Result<ModelInfo> {
        // Build the new model before dropping the old one: a failed load keeps serving.
        let p = Pipeline::load(spec)?;
        let info = p.info();
        self.pipeline = Some(p);
        Ok(info)
    }
    fn prepare(&self, request: &GenerateRequest) -> Result<(u32, u32)> {
        let p = self.pipeline.as_ref().ok_or(EngineError::NoModel)?;
        let job = p.validate(request)?;
        Ok((request.steps, p.nfe(&job)))
    }
    fn generate(&mut self, request: &GenerateRequest, hooks: &mut dyn Hooks) -> Result<Output> {
        let p = self.pipeline.as_ref().ok_or(EngineError::NoModel)?;
        let job = p.validate(request)?;
        p.generate(&job, hooks)
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
                Command::SetLoras(list) if list.is_empty() => Ok(()),
                Command::SetLoras(_) => self.emit(Event::Warning {
                    id: None,
                    message: "LoRA support is not in this build yet; the LoRA list was ignored".into(),
                }),
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

    fn job(&mut self, id: JobId, request: &GenerateRequest) -> std::result::Result<(), Disconnected> {
        if self.board.start(id) {
            self.board.finish(id);
            return self.emit(Event::Cancelled { id, at_step: 0 });
        }
        let prepared = catch_unwind(AssertUnwindSafe(|| self.backend.prepare(request)));
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
            every: request.preview_every,
            disconnected: false,
        };
        let backend = &mut self.backend;
        let result = catch_unwind(AssertUnwindSafe(|| backend.generate(request, &mut hooks)));
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
                latents: Some(out.latents),
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

//! The server's side of the engine: one engine thread, one dispatcher thread that reads its
//! events and hands each job's end to the request waiting for it, and the state
//! `/sdapi/v1/progress` and `/metrics` read.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use latent_engine::protocol::{Event, GenerateRequest, ImageRgb8, JobId, ModelInfo, ModelSpec, UpscaleRequest};
use latent_engine::{EngineConfig, EngineHandle};
use tokio::sync::oneshot;

/// How one job ended.
#[derive(Debug)]
pub enum Outcome {
    Finished {
        image: ImageRgb8,
        metadata: String,
    },
    Cancelled,
    /// Refused before it started (a bad request) or failed while running.
    Failed {
        error: String,
        started: bool,
    },
}

/// What `/progress` shows of the running job.
#[derive(Clone, Debug, Default)]
pub struct Running {
    pub id: Option<JobId>,
    pub step: u32,
    pub total: u32,
    pub started: Option<Instant>,
    pub preview: Option<Arc<ImageRgb8>>,
}

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default)]
pub struct Counters {
    pub finished: u64,
    pub cancelled: u64,
    pub failed: u64,
    pub steps: u64,
    pub step_seconds: f64,
    pub nfe: u64,
}

#[derive(Default)]
struct State {
    waiting: HashMap<JobId, (oneshot::Sender<Outcome>, bool)>,
    load: Option<oneshot::Sender<Result<ModelInfo, String>>>,
    running: Running,
    counters: Counters,
    model: Option<(PathBuf, ModelInfo)>,
    nfe: HashMap<JobId, u32>,
}

/// The engine and its bookkeeping, shared by every request.
pub struct Hub {
    engine: EngineHandle,
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Hub {
    /// Starts the engine and the thread that reads its events.
    pub fn start(config: EngineConfig) -> anyhow::Result<Arc<Hub>> {
        let engine = EngineHandle::spawn(config, || {})?;
        let hub = Arc::new(Hub {
            engine,
            state: Mutex::new(State::default()),
        });
        let weak = Arc::downgrade(&hub);
        std::thread::Builder::new().name("latent-serve-events".into()).spawn(move || {
            loop {
                let Some(hub) = weak.upgrade() else { return };
                if let Some(e) = hub.engine.recv_timeout(Duration::from_millis(200)) {
                    hub.on_event(e);
                }
            }
        })?;
        Ok(hub)
    }

    fn on_event(&self, e: Event) {
        let mut s = lock(&self.state);
        match e {
            Event::ModelLoaded { info } => {
                if let Some(tx) = s.load.take() {
                    let _ = tx.send(Ok(info));
                }
            }
            Event::Failed { id: None, error } => {
                if let Some(tx) = s.load.take() {
                    let _ = tx.send(Err(error));
                }
            }
            Event::Started { id, total_steps, nfe } => {
                if let Some(w) = s.waiting.get_mut(&id) {
                    w.1 = true;
                }
                s.nfe.insert(id, nfe);
                s.running = Running {
                    id: Some(id),
                    step: 0,
                    total: total_steps,
                    started: Some(Instant::now()),
                    preview: None,
                };
            }
            Event::Progress { id, step, step_time, .. } => {
                if s.running.id == Some(id) {
                    s.running.step = step;
                }
                s.counters.steps += 1;
                s.counters.step_seconds += step_time.as_secs_f64();
            }
            Event::Preview { id, image, .. } => {
                if s.running.id == Some(id) {
                    s.running.preview = Some(Arc::new(image));
                }
            }
            Event::Finished { id, image, metadata, .. } => {
                s.counters.finished += 1;
                s.counters.nfe += u64::from(s.nfe.remove(&id).unwrap_or(0));
                Self::end(&mut s, id, Outcome::Finished { image, metadata });
            }
            Event::Cancelled { id, .. } => {
                s.counters.cancelled += 1;
                s.nfe.remove(&id);
                Self::end(&mut s, id, Outcome::Cancelled);
            }
            Event::Failed { id: Some(id), error } => {
                s.counters.failed += 1;
                s.nfe.remove(&id);
                let started = s.waiting.get(&id).is_some_and(|w| w.1);
                Self::end(&mut s, id, Outcome::Failed { error, started });
            }
            Event::Warning { .. } | Event::LorasApplied { .. } => {}
        }
    }

    fn end(s: &mut State, id: JobId, outcome: Outcome) {
        if s.running.id == Some(id) {
            s.running = Running::default();
        }
        if let Some((tx, _)) = s.waiting.remove(&id) {
            let _ = tx.send(outcome);
        }
    }

    /// Loads a model and waits for it; the current one keeps serving if it fails.
    pub async fn load(&self, spec: ModelSpec) -> Result<ModelInfo, String> {
        let (tx, rx) = oneshot::channel();
        lock(&self.state).load = Some(tx);
        let path = spec.path.clone();
        self.engine.load_model(spec).map_err(|e| e.to_string())?;
        let info = rx.await.map_err(|_| "the engine stopped".to_string())??;
        lock(&self.state).model = Some((path, info.clone()));
        Ok(info)
    }

    /// The loaded model's file and what the engine said of it.
    pub fn model(&self) -> Option<(PathBuf, ModelInfo)> {
        lock(&self.state).model.clone()
    }

    /// Jobs sent and not ended yet.
    pub fn queued(&self) -> usize {
        lock(&self.state).waiting.len()
    }

    /// Sends a generation; its end arrives on the receiver.
    pub fn generate(&self, request: GenerateRequest) -> Result<(JobId, oneshot::Receiver<Outcome>), String> {
        // The state is held while sending so the job's events cannot overtake its waiter.
        let mut s = lock(&self.state);
        let id = self.engine.generate(request).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        s.waiting.insert(id, (tx, false));
        Ok((id, rx))
    }

    /// Sends an upscale; its end arrives on the receiver.
    pub fn upscale(&self, request: UpscaleRequest) -> Result<(JobId, oneshot::Receiver<Outcome>), String> {
        let mut s = lock(&self.state);
        let id = self.engine.upscale(request).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        s.waiting.insert(id, (tx, false));
        Ok((id, rx))
    }

    /// Cancels a job (queued or running).
    pub fn cancel(&self, id: JobId) {
        self.engine.cancel(id);
    }

    /// Cancels every job sent and not ended (A1111's interrupt).
    pub fn cancel_all(&self) {
        let ids: Vec<JobId> = lock(&self.state).waiting.keys().copied().collect();
        for id in ids {
            self.engine.cancel(id);
        }
    }

    /// Cancels these jobs (the rest of a request one of whose jobs was refused).
    pub fn cancel_all_of(&self, ids: &[JobId]) {
        for id in ids {
            self.engine.cancel(*id);
        }
    }

    /// Cancels the running job only (A1111's skip).
    pub fn cancel_running(&self) {
        if let Some(id) = lock(&self.state).running.id {
            self.engine.cancel(id);
        }
    }

    pub fn running(&self) -> Running {
        lock(&self.state).running.clone()
    }

    pub fn counters(&self) -> Counters {
        lock(&self.state).counters.clone()
    }
}

/// Cancels its jobs when dropped before they ended: a request whose client went away (the
/// handler's future is dropped) stops its work.
pub struct CancelOnDrop {
    pub hub: Arc<Hub>,
    pub ids: Vec<JobId>,
    pub done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            for id in &self.ids {
                self.hub.cancel(*id);
            }
        }
    }
}

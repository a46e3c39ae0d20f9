//! The server's side of the engine: one engine thread, one dispatcher thread that reads its
//! events and hands each job's end to the request waiting for it, and the state
//! `/sdapi/v1/progress` and `/metrics` read.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use latent_engine::protocol::{
    CompareRequest, Event, GenerateRequest, ImageRgb8, JobId, LoraReport, LoraSpec, ModelInfo, ModelSpec, UpscaleRequest,
};
use latent_engine::{EngineConfig, EngineHandle};
use tokio::sync::{broadcast, mpsc, oneshot};

/// Who waits for the answer to a control command (load a model, set the LoRAs): the engine
/// answers them in the order they were sent, one event each.
type ControlReply = Option<oneshot::Sender<Result<Event, String>>>;

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
    control: VecDeque<ControlReply>,
    /// The LoRA set last sent to the engine (every job says which it runs with).
    loras: Vec<LoraSpec>,
    /// Jobs whose every event goes to a stream (`/latent/v1/generate`).
    watchers: HashMap<JobId, mpsc::UnboundedSender<Event>>,
    running: Running,
    counters: Counters,
    model: Option<(PathBuf, ModelInfo)>,
    /// SHA-256 of checkpoints hashed so far (the loaded ones), for `/sd-models`.
    hashes: HashMap<PathBuf, String>,
    nfe: HashMap<JobId, u32>,
}

/// The engine and its bookkeeping, shared by every request.
pub struct Hub {
    engine: EngineHandle,
    state: Mutex<State>,
    /// Every event, for `/latent/v1/events`.
    all: broadcast::Sender<Arc<Event>>,
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
            all: broadcast::channel(256).0,
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
        if self.all.receiver_count() > 0 {
            let _ = self.all.send(Arc::new(e.clone()));
        }
        let mut s = lock(&self.state);
        if let Some(id) = e.job()
            && let Some(w) = s.watchers.get(&id)
        {
            let _ = w.send(e.clone());
            if e.is_final() {
                s.watchers.remove(&id);
            }
        }
        match e {
            Event::ModelLoaded { .. } | Event::LorasApplied { .. } => {
                if let Some(Some(tx)) = s.control.pop_front() {
                    let _ = tx.send(Ok(e));
                }
            }
            Event::Failed { id: None, error } => match s.control.pop_front() {
                Some(Some(tx)) => {
                    let _ = tx.send(Err(error));
                }
                _ => eprintln!("serve: {error}"),
            },
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
            Event::Warning { .. } | Event::CompareCell { .. } => {}
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
        let path = spec.path.clone();
        let rx = {
            let mut s = lock(&self.state);
            self.engine.load_model(spec).map_err(|e| e.to_string())?;
            let (tx, rx) = oneshot::channel();
            s.control.push_back(Some(tx));
            rx
        };
        let Event::ModelLoaded { info } = rx.await.map_err(|_| "the engine stopped".to_string())?? else {
            return Err("the engine answered out of turn".into());
        };
        let known = lock(&self.state).hashes.contains_key(&path);
        if !known && path.is_file() {
            // As A1111: a checkpoint is hashed once it is loaded (off the async threads).
            let p = path.clone();
            if let Ok(Some(h)) = tokio::task::spawn_blocking(move || latent_engine::checkpoint::sha256_hex(&p)).await {
                lock(&self.state).hashes.insert(path.clone(), h);
            }
        }
        lock(&self.state).model = Some((path, info.clone()));
        Ok(info)
    }

    /// The SHA-256 of `path` if it was loaded on this server.
    pub fn sha256(&self, path: &std::path::Path) -> Option<String> {
        lock(&self.state).hashes.get(path).cloned()
    }

    /// Applies a LoRA set and waits for the engine's reports (the set stays until a job or
    /// another call asks for a different one).
    pub async fn set_loras(&self, loras: Vec<LoraSpec>) -> Result<Vec<LoraReport>, String> {
        let rx = {
            let mut s = lock(&self.state);
            self.engine.set_loras(loras.clone()).map_err(|e| e.to_string())?;
            let (tx, rx) = oneshot::channel();
            s.control.push_back(Some(tx));
            s.loras = loras;
            rx
        };
        match rx.await.map_err(|_| "the engine stopped".to_string())?? {
            Event::LorasApplied { reports } => Ok(reports),
            _ => Err("the engine answered out of turn".into()),
        }
    }

    /// Every event from now on (for `/latent/v1/events`).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.all.subscribe()
    }

    /// The loaded model's file and what the engine said of it.
    pub fn model(&self) -> Option<(PathBuf, ModelInfo)> {
        lock(&self.state).model.clone()
    }

    /// Jobs sent and not ended yet.
    pub fn queued(&self) -> usize {
        lock(&self.state).waiting.len()
    }

    /// Sends a generation that runs with no LoRA set (A1111's requests name theirs in the
    /// prompt); its end arrives on the receiver.
    pub fn generate(&self, request: GenerateRequest) -> Result<(JobId, oneshot::Receiver<Outcome>), String> {
        self.generate_with(request, vec![], None)
    }

    /// Sends a generation that runs with `loras` (sent to the engine first when they differ
    /// from the last set); every event of the job also goes to `watch`.
    pub fn generate_with(
        &self,
        request: GenerateRequest,
        loras: Vec<LoraSpec>,
        watch: Option<mpsc::UnboundedSender<Event>>,
    ) -> Result<(JobId, oneshot::Receiver<Outcome>), String> {
        self.job_with(loras, watch, |e| e.generate(request))
    }

    /// Sends a solver comparison (the solver lab) that runs with `loras`; its events go to
    /// `watch` as a generation's do.
    pub fn compare_with(
        &self,
        request: CompareRequest,
        loras: Vec<LoraSpec>,
        watch: Option<mpsc::UnboundedSender<Event>>,
    ) -> Result<(JobId, oneshot::Receiver<Outcome>), String> {
        self.job_with(loras, watch, |e| e.compare(request))
    }

    fn job_with(
        &self,
        loras: Vec<LoraSpec>,
        watch: Option<mpsc::UnboundedSender<Event>>,
        send: impl FnOnce(&EngineHandle) -> latent_engine::Result<JobId>,
    ) -> Result<(JobId, oneshot::Receiver<Outcome>), String> {
        // The state is held while sending so the job's events cannot overtake its waiter.
        let mut s = lock(&self.state);
        if s.loras != loras {
            self.engine.set_loras(loras.clone()).map_err(|e| e.to_string())?;
            s.control.push_back(None);
            s.loras = loras;
        }
        let id = send(&self.engine).map_err(|e| e.to_string())?;
        let (tx, rx) = oneshot::channel();
        s.waiting.insert(id, (tx, false));
        if let Some(w) = watch {
            s.watchers.insert(id, w);
        }
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

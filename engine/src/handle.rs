//! The caller's side of the engine: spawn it, send commands, read events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::error::{EngineError, Result};
use crate::protocol::{Command, Event, GenerateRequest, JobId, ModelSpec};
use crate::worker::{Backend, CancelBoard, PipelineBackend, Waker, Worker};

/// Sizes and names; bounded channels only.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub thread_name: String,
    pub command_capacity: usize,
    pub event_capacity: usize,
    /// Folders searched for `<lora:name>` prompt tags (A1111 `models/Lora`, ComfyUI
    /// `models/loras`, ...); the folders of the panel's LoRAs are searched too.
    pub lora_dirs: Vec<std::path::PathBuf>,
    /// Folders searched for textual-inversion embeddings named in prompts (A1111's
    /// `embeddings/`).
    pub embedding_dirs: Vec<std::path::PathBuf>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            thread_name: "latent-engine".into(),
            command_capacity: 64,
            event_capacity: 256,
            lora_dirs: vec![],
            embedding_dirs: vec![],
        }
    }
}

/// A running engine thread. Dropping the handle cancels the running job and stops the thread.
pub struct EngineHandle {
    commands: Sender<Command>,
    events: Receiver<Event>,
    board: Arc<CancelBoard>,
    thread: Option<JoinHandle<()>>,
    next_id: AtomicU64,
}

impl EngineHandle {
    /// Spawns the engine with the real pipeline. `waker` is called after every event (a
    /// window passes `ctx.request_repaint()`); it must not block.
    pub fn spawn(config: EngineConfig, waker: impl Fn() + Send + Sync + 'static) -> Result<Self> {
        let backend = PipelineBackend::new(config.lora_dirs.clone()).with_embedding_dirs(config.embedding_dirs.clone());
        Self::spawn_with_backend(config, Box::new(backend), waker)
    }

    /// Spawns the engine around any backend (tests and UI work use stand-ins).
    pub fn spawn_with_backend(config: EngineConfig, backend: Box<dyn Backend>, waker: impl Fn() + Send + Sync + 'static) -> Result<Self> {
        let (ctx, crx) = crossbeam_channel::bounded(config.command_capacity.max(1));
        let (etx, erx) = crossbeam_channel::bounded(config.event_capacity.max(4));
        let board = Arc::new(CancelBoard::default());
        let waker: Waker = Arc::new(waker);
        let worker = Worker {
            backend,
            commands: crx,
            events: etx,
            board: board.clone(),
            waker,
        };
        let thread = std::thread::Builder::new()
            .name(config.thread_name)
            .spawn(move || worker.run())
            .map_err(|e| EngineError::Other(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            commands: ctx,
            events: erx,
            board,
            thread: Some(thread),
            next_id: AtomicU64::new(1),
        })
    }

    /// Queues a command without blocking; fails when the queue is full or the engine is gone.
    pub fn send(&self, command: Command) -> Result<()> {
        if let Command::Cancel(id) = command {
            self.board.cancel(id);
            return Ok(());
        }
        self.commands.try_send(command).map_err(|e| match e {
            TrySendError::Full(_) => EngineError::Other("the engine's command queue is full; try again".into()),
            TrySendError::Disconnected(_) => EngineError::Other("the engine has stopped".into()),
        })
    }

    /// Loads a model (answered by `ModelLoaded` or `Failed { id: None }`).
    pub fn load_model(&self, spec: ModelSpec) -> Result<()> {
        self.send(Command::LoadModel(spec))
    }

    /// Replaces the LoRA set (answered by `LorasApplied` or `Failed { id: None }`).
    pub fn set_loras(&self, loras: Vec<crate::protocol::LoraSpec>) -> Result<()> {
        self.send(Command::SetLoras(loras))
    }

    /// Queues a generation and returns its id.
    pub fn generate(&self, request: GenerateRequest) -> Result<JobId> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Generate { id, request })?;
        Ok(id)
    }

    /// Queues an upscale and returns its id (it is answered as a generation is).
    pub fn upscale(&self, request: crate::protocol::UpscaleRequest) -> Result<JobId> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Upscale { id, request })?;
        Ok(id)
    }

    /// Queues a solver comparison and returns its id (answered as a generation is, with a
    /// `CompareCell` per cell before `Finished`).
    pub fn compare(&self, request: crate::protocol::CompareRequest) -> Result<JobId> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.send(Command::Compare { id, request })?;
        Ok(id)
    }

    /// Cancels a running or queued job; the running one stops before its next network
    /// evaluation.
    pub fn cancel(&self, id: JobId) {
        self.board.cancel(id);
    }

    /// The next event, if one is waiting (never blocks).
    pub fn try_recv(&self) -> Option<Event> {
        self.events.try_recv().ok()
    }

    /// Waits up to `timeout` for the next event.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Event> {
        self.events.recv_timeout(timeout).ok()
    }

    /// The event receiver, for `select!`-style use.
    pub fn events(&self) -> &Receiver<Event> {
        &self.events
    }

    /// Stops the engine and waits for its thread.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.board.shutdown();
        let _ = self.commands.try_send(Command::Shutdown);
        if let Some(t) = self.thread.take() {
            // Drain events so a worker blocked on a full queue can finish.
            while !t.is_finished() {
                while self.events.try_recv().is_ok() {}
                std::thread::sleep(Duration::from_millis(2));
            }
            let _ = t.join();
        }
    }
}

impl Drop for EngineHandle {
    fn drop(&mut self) {
        self.stop();
    }
}

//! File > Connect to server: the window's jobs run on a `latent-studio serve` elsewhere.
//! The window keeps its own engine thread and protocol; only the backend behind it changes
//! (`crate::remote::RemoteBackend`), so panels, previews, history and cancel work as they
//! do here. Listing the server runs on a thread: the window never waits on the network.

use latent_engine::{EngineConfig, EngineHandle};

use super::app::{StudioApp, local_config, waker};
use super::state::{Level, ModelState};
use crate::remote::{Listing, RemoteBackend, Server};

impl StudioApp {
    /// Starts connecting to the address typed in the Connect window.
    pub fn connect(&mut self) {
        let r = &mut self.session.remote;
        match Server::parse(&r.url, &r.token) {
            Ok(server) => {
                r.error = None;
                self.list_server(server);
            }
            Err(e) => r.error = Some(e),
        }
    }

    /// Lists the connected server's files again (Rescan folders while connected).
    pub(super) fn relist(&mut self) {
        if let Some((server, _)) = &self.session.remote.connected {
            let server = server.clone();
            self.list_server(server);
        }
    }

    fn list_server(&mut self, server: Server) {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let wake = waker(&self.ctx);
        let spawned = std::thread::Builder::new().name("latent-connect".into()).spawn(move || {
            let _ = tx.send(crate::remote::list(&server).map(|l| (server, l)));
            wake();
        });
        match spawned {
            Ok(_) => self.session.remote.pending = Some(rx),
            Err(e) => self.session.remote.error = Some(format!("cannot start a thread: {e}")),
        }
    }

    /// Takes the answer of a connection attempt, if one came.
    pub(super) fn poll_connect(&mut self) {
        let Some(rx) = &self.session.remote.pending else { return };
        let result = match rx.try_recv() {
            Ok(r) => r,
            Err(crossbeam_channel::TryRecvError::Empty) => return,
            Err(crossbeam_channel::TryRecvError::Disconnected) => Err("the connection attempt stopped".into()),
        };
        self.session.remote.pending = None;
        let (server, listing) = match result {
            Ok(v) => v,
            Err(e) => {
                self.session.say(Level::Error, format!("Cannot connect: {e}"));
                self.session.remote.error = Some(e);
                return;
            }
        };
        let same = self.session.remote.connected.as_ref().is_some_and(|(s, _)| *s == server);
        self.apply_listing(&listing);
        let current = listing.current.clone();
        if same {
            self.session.remote.connected = Some((server, listing));
            return;
        }
        let engine = match EngineHandle::spawn_with_backend(
            EngineConfig::default(),
            Box::new(RemoteBackend::new(server.clone())),
            waker(&self.ctx),
        ) {
            Ok(e) => e,
            Err(e) => {
                self.session.say(Level::Error, format!("Cannot connect: {e}"));
                return;
            }
        };
        self.replace_engine(engine);
        self.settings.server_url = server.url();
        self.session
            .say(Level::Info, format!("Connected to {}: images are made there now.", server.url()));
        self.session.remote.show = false;
        self.session.remote.connected = Some((server, listing));
        self.push_loras();
        if let Some(m) = current {
            self.open_model(&m);
        }
    }

    /// Back to this machine's engine, its folders and its model.
    pub fn disconnect(&mut self) {
        let Some((server, _)) = self.session.remote.connected.take() else {
            return;
        };
        let config = local_config(&self.settings, self.builtin_loras.as_deref());
        match EngineHandle::spawn(config, waker(&self.ctx)) {
            Ok(e) => self.replace_engine(e),
            Err(e) => {
                self.session.say(Level::Error, format!("Cannot start the engine: {e}"));
                return;
            }
        }
        self.rescan();
        self.push_loras();
        if let Some(m) = self.settings.model.clone().or_else(crate::assets::embedded_model) {
            self.open_model(&m);
        }
        self.session.say(
            Level::Info,
            format!("Disconnected from {}: images are made on this machine again.", server.url()),
        );
    }

    /// Swaps the engine; the old one's jobs end with it (it stops on a thread of its own, so
    /// a job waiting on a server never holds up the window).
    fn replace_engine(&mut self, engine: EngineHandle) {
        let old = std::mem::replace(&mut self.engine, engine);
        let _ = std::thread::Builder::new()
            .name("latent-engine-stop".into())
            .spawn(move || drop(old));
        self.session.jobs.clear();
        self.session.model = ModelState::None;
        self.session.lora_reports.clear();
    }

    fn apply_listing(&mut self, l: &Listing) {
        let s = &mut self.session;
        s.found_models = l.models.clone();
        s.model_notes.clear();
        s.found_loras = l.loras.clone();
        s.found_upscalers = l.upscalers.clone();
        s.found_embeddings = l.embeddings.clone();
        // VAEs and tiny decoders stay the server's own choice.
        s.found_vaes.clear();
        s.found_tiny_decoders.clear();
    }
}

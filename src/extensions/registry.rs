//! The extension registry: reconciles running servers with the config and the extensions
//! directory, and serves their tools to the agent and the HTTP API.

use std::collections::BTreeMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::definition::{Definition, DefinitionProblem, desired_set};
use super::plugin;
use super::slot::{ExtensionStatus, Slot};
use super::supervisor;
use super::watch::{DirectoryWatch, MAX_DELAY, QUIET_PERIOD, settle};
use crate::config::{ConfigHandle, ExtensionKind, Snapshot};

/// Shared handle to the registry, cheap to clone.
#[derive(Debug, Clone)]
pub struct Registry {
    pub(super) shared: Arc<Published>,
    commands: mpsc::UnboundedSender<Command>,
    pub(super) config: ConfigHandle,
    /// Serializes changes through the API, so two requests cannot add the same name.
    pub(super) changes: Arc<tokio::sync::Mutex<()>>,
}

/// What readers see: the extensions and the problems of the last reconcile.
#[derive(Debug, Default)]
pub(super) struct Published {
    pub(super) slots: ArcSwap<BTreeMap<String, Arc<Slot>>>,
    problems: ArcSwap<Vec<DefinitionProblem>>,
}

/// Requests to the reconcile loop, each acknowledged when done.
#[derive(Debug)]
enum Command {
    Reconcile(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

impl Registry {
    /// Starts the reconcile loop, which starts every enabled extension of the current
    /// config and directory and then follows their changes.
    pub fn start(config: ConfigHandle) -> Self {
        let shared = Arc::new(Published::default());
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (directory_tx, directory_rx) = mpsc::unbounded_channel();
        let reconciler = Reconciler {
            config: config.clone(),
            snapshots: config.subscribe(),
            directory_events: directory_rx,
            commands: command_rx,
            watch: DirectoryWatch::new(directory_tx),
            members: BTreeMap::new(),
            shared: shared.clone(),
        };
        tokio::spawn(reconciler.run());
        Self {
            shared,
            commands,
            config,
            changes: Arc::default(),
        }
    }

    /// Re-reads the config and the directory and applies the difference; returns when done.
    pub async fn reconcile(&self) {
        self.request(Command::Reconcile).await;
    }

    /// Stops every server and reaps its processes; returns when all are gone.
    pub async fn shutdown(&self) {
        self.request(Command::Shutdown).await;
    }

    async fn request(&self, command: fn(oneshot::Sender<()>) -> Command) {
        let (ack, done) = oneshot::channel();
        if self.commands.send(command(ack)).is_ok() {
            // An error means the loop has ended, which is what shutdown waits for.
            let _ = done.await;
        }
    }

    /// Returns the names of the enabled extensions, sorted.
    pub fn names(&self) -> Vec<String> {
        self.shared
            .slots
            .load()
            .values()
            .filter(|slot| slot.definition().config.enabled)
            .map(|slot| slot.name.clone())
            .collect()
    }

    /// Returns the status of every defined extension, sorted by name.
    pub fn statuses(&self) -> Vec<ExtensionStatus> {
        self.shared
            .slots
            .load()
            .values()
            .map(|slot| slot.status())
            .collect()
    }

    /// Returns the status of one extension.
    pub fn status(&self, name: &str) -> Option<ExtensionStatus> {
        self.slot(name).map(|slot| slot.status())
    }

    /// Returns the broken manifests and duplicate names of the last reconcile.
    pub fn problems(&self) -> Vec<DefinitionProblem> {
        self.shared.problems.load().as_ref().clone()
    }

    pub(super) fn slot(&self, name: &str) -> Option<Arc<Slot>> {
        self.shared.slots.load().get(name).cloned()
    }
}

/// A supervised extension inside the reconcile loop.
struct Member {
    slot: Arc<Slot>,
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
}

impl Member {
    fn start(slot: Arc<Slot>) -> Self {
        let stop = CancellationToken::new();
        let task = slot
            .definition()
            .config
            .enabled
            .then(|| spawn_supervisor(slot.clone(), stop.clone()));
        Self { slot, stop, task }
    }

    async fn stop(mut self) -> Arc<Slot> {
        self.stop.cancel();
        if let Some(task) = self.task.take()
            && let Err(error) = task.await
        {
            tracing::error!(extension = %self.slot.name, %error, "extension supervisor failed");
            self.slot.set_stopped();
        }
        self.slot
    }
}

/// Starts the task that keeps `slot` running: the plugin loader for native plugins, the
/// MCP supervisor for servers.
fn spawn_supervisor(slot: Arc<Slot>, stop: CancellationToken) -> JoinHandle<()> {
    match slot.definition().config.kind {
        ExtensionKind::Builtin | ExtensionKind::Plugin => {
            tokio::spawn(plugin::supervise(slot, stop))
        }
        _ => tokio::spawn(supervisor::supervise(slot, stop)),
    }
}

/// What woke the reconcile loop.
enum Event {
    ConfigChanged,
    DirectoryChanged,
    Command(Command),
    Closed,
}

struct Reconciler {
    config: ConfigHandle,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    directory_events: mpsc::UnboundedReceiver<()>,
    commands: mpsc::UnboundedReceiver<Command>,
    watch: DirectoryWatch,
    members: BTreeMap<String, Member>,
    shared: Arc<Published>,
}

impl Reconciler {
    async fn run(mut self) {
        self.reconcile().await;
        loop {
            let event = tokio::select! {
                changed = self.snapshots.changed() => match changed {
                    Ok(()) => Event::ConfigChanged,
                    Err(_) => Event::Closed,
                },
                Some(()) = self.directory_events.recv() => Event::DirectoryChanged,
                command = self.commands.recv() => command.map_or(Event::Closed, Event::Command),
            };
            match event {
                Event::ConfigChanged => self.reconcile().await,
                Event::DirectoryChanged => {
                    settle(&mut self.directory_events, QUIET_PERIOD, MAX_DELAY).await;
                    self.reconcile().await;
                }
                Event::Command(Command::Reconcile(ack)) => {
                    self.reconcile().await;
                    let _ = ack.send(());
                }
                Event::Command(Command::Shutdown(ack)) => {
                    self.stop_all().await;
                    let _ = ack.send(());
                    break;
                }
                Event::Closed => {
                    self.stop_all().await;
                    break;
                }
            }
        }
        tracing::debug!("extension registry stopped");
    }

    /// Applies the difference between the running extensions and the desired set.
    async fn reconcile(&mut self) {
        let snapshot = self.config.current();
        let config = snapshot.config.clone();
        let desired = match tokio::task::spawn_blocking(move || desired_set(&config)).await {
            Ok(desired) => desired,
            Err(error) => {
                tracing::error!(%error, "reading extension definitions failed");
                return;
            }
        };
        self.watch.reset_if_missing();
        self.watch.follow(&snapshot.config.extensions_dir);

        let mut definitions = desired.definitions;
        let mut stopping = Vec::new();
        let mut restarting = Vec::new();
        let names: Vec<String> = self.members.keys().cloned().collect();
        for name in names {
            let Some(next) = definitions.remove(&name) else {
                tracing::info!(extension = %name, "extension removed");
                stopping.extend(self.members.remove(&name));
                continue;
            };
            let Some(member) = self.members.get(&name) else {
                continue;
            };
            let current = member.slot.definition();
            if current.needs_restart(&next) {
                tracing::info!(extension = %name, "extension changed; restarting it");
                restarting.extend(self.members.remove(&name).map(|member| (member, next)));
            } else if *current != next {
                tracing::info!(extension = %name, timeout = next.config.timeout, "extension settings changed; they apply to the next call");
                member.slot.set_definition(next);
            }
        }
        let stopped = futures::future::join_all(stopping.into_iter().map(Member::stop));
        let restarted = futures::future::join_all(restarting.into_iter().map(
            |(member, next): (Member, Definition)| async move {
                let slot = member.stop().await;
                slot.set_definition(next);
                slot
            },
        ));
        let (_, restarted) = tokio::join!(stopped, restarted);
        for slot in restarted {
            self.members.insert(slot.name.clone(), Member::start(slot));
        }
        for (name, definition) in definitions {
            tracing::info!(extension = %name, source = ?definition.source, "extension added");
            self.members
                .insert(name, Member::start(Slot::new(definition)));
        }
        // A plugin's library may have changed without a change of its definition.
        for member in self.members.values() {
            member.slot.refresh.notify_one();
        }
        self.publish(desired.problems);
    }

    async fn stop_all(&mut self) {
        let members = std::mem::take(&mut self.members);
        let count = members.len();
        futures::future::join_all(members.into_values().map(Member::stop)).await;
        self.publish(Vec::new());
        tracing::info!(extensions = count, "all extensions stopped");
    }

    fn publish(&self, problems: Vec<DefinitionProblem>) {
        let slots = self
            .members
            .iter()
            .map(|(name, member)| (name.clone(), member.slot.clone()))
            .collect();
        self.shared.slots.store(Arc::new(slots));
        self.shared.problems.store(Arc::new(problems));
    }
}

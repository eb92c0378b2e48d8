//! The extension registry: reconciles running servers with the config and the extensions
//! directory, and serves their tools to the agent and the HTTP API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::definition::{Definition, DefinitionProblem, desired_set};
use super::plugin;
use super::slot::{ExtensionStatus, Slot};
use super::supervisor;
use super::watch::{DirectoryWatch, MAX_DELAY, QUIET_PERIOD, settle};
use crate::config::{ConfigHandle, ExtensionKind, Snapshot};

/// Time a supervisor gets to stop its extension when the extension is removed or
/// restarted. The slowest regular stop is a stdio server that needs SIGKILL: 2 s after its
/// stdin closes, 2 s after SIGTERM, 2 s after SIGKILL and 2 s for its stderr pipe.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Time an aborted supervisor task gets to end, and then its server's killed process group
/// gets to be reaped.
const ABORT_GRACE: Duration = Duration::from_secs(2);

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
    /// A request to stop every extension and abort the supervisors still running at
    /// `deadline`.
    Shutdown {
        ack: oneshot::Sender<()>,
        deadline: Instant,
    },
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

    /// Stops every server and reaps its processes, then the processes that left a server's
    /// group. Supervisors still running after `limit` are aborted, and the process groups
    /// of their stdio servers killed and reaped, within about 8 s after `limit`. Stopping
    /// the processes that left takes up to 4 s more in each of three rounds.
    pub async fn shutdown(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        self.stop_servers(deadline).await;
        // Processes that left their server's process group carry the daemon's marker.
        #[cfg(target_os = "linux")]
        {
            let stopped = tokio::task::spawn_blocking(|| super::orphans::stop_escaped(None))
                .await
                .unwrap_or(0);
            if stopped > 0 {
                tracing::warn!(
                    stopped,
                    "stopped processes that extension servers had moved out of their groups"
                );
            }
        }
    }

    async fn stop_servers(&self, deadline: Instant) {
        let stopped = self.request(|ack| Command::Shutdown { ack, deadline });
        // The loop itself aborts and reaps within 2 × ABORT_GRACE after the deadline, but
        // it may still be busy with a reconcile.
        if tokio::time::timeout_at(deadline + ABORT_GRACE * 3, stopped)
            .await
            .is_ok()
        {
            return;
        }
        // The supervisors may still run, so a server killed here can also be reported as
        // crashed, which no longer matters during shutdown.
        let slots = self.shared.slots.load_full();
        tracing::error!(
            extensions = ?slots.keys().collect::<Vec<_>>(),
            "the extension registry did not stop in time, so its stdio servers are killed"
        );
        let killed = slots
            .values()
            .map(|slot| slot.server_group.kill_and_reap(&slot.name, ABORT_GRACE));
        futures::future::join_all(killed).await;
    }

    async fn request(&self, command: impl FnOnce(oneshot::Sender<()>) -> Command) {
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

    /// Cancels the supervisor and waits for it until `deadline`. A supervisor still
    /// running then is aborted, and the process group of its stdio server killed and
    /// reaped. Returns the slot and whether the supervisor had to be aborted.
    async fn stop(mut self, deadline: Instant) -> (Arc<Slot>, bool) {
        self.stop.cancel();
        let Some(mut task) = self.task.take() else {
            return (self.slot, false);
        };
        let name = &self.slot.name;
        let aborted = match tokio::time::timeout_at(deadline, &mut task).await {
            Ok(Ok(())) => return (self.slot, false),
            Ok(Err(error)) => {
                tracing::error!(extension = %name, %error, "extension supervisor failed");
                false
            }
            Err(_) => {
                task.abort();
                // NOTE: a task blocked outside an await point cannot be aborted and keeps
                // running. The wait below only bounds how long the registry waits for it.
                let _ = tokio::time::timeout(ABORT_GRACE, task).await;
                tracing::error!(extension = %name, "extension did not stop in time, so its supervisor was aborted");
                true
            }
        };
        // The supervisor ended without its stop sequence, so its server may still run.
        self.slot
            .server_group
            .kill_and_reap(name, ABORT_GRACE)
            .await;
        self.slot.set_stopped();
        (self.slot, aborted)
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
                Event::Command(Command::Shutdown { ack, deadline }) => {
                    self.stop_all(deadline).await;
                    let _ = ack.send(());
                    break;
                }
                Event::Closed => {
                    self.stop_all(Instant::now() + STOP_GRACE).await;
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
        let deadline = Instant::now() + STOP_GRACE;
        let stopped = futures::future::join_all(
            stopping
                .into_iter()
                .map(|member: Member| member.stop(deadline)),
        );
        let restarted = futures::future::join_all(restarting.into_iter().map(
            |(member, next): (Member, Definition)| async move {
                let (slot, _) = member.stop(deadline).await;
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

    async fn stop_all(&mut self, deadline: Instant) {
        let members = std::mem::take(&mut self.members);
        let count = members.len();
        let stops = members.into_values().map(|member| member.stop(deadline));
        let stopped = futures::future::join_all(stops).await;
        self.publish(Vec::new());
        let aborted: Vec<&str> = stopped
            .iter()
            .filter(|(_, aborted)| *aborted)
            .map(|(slot, _)| slot.name.as_str())
            .collect();
        if aborted.is_empty() {
            tracing::info!(extensions = count, "all extensions stopped");
        } else {
            tracing::warn!(
                extensions = count,
                ?aborted,
                "all extensions stopped, but the supervisors of some did not stop in time and were aborted"
            );
        }
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

#[cfg(test)]
mod tests {
    use nix::unistd::Pid;

    use super::*;
    use crate::config::ExtensionConfig;
    use crate::extensions::definition::Source;
    use crate::extensions::process;
    use crate::extensions::slot::State;

    #[tokio::test]
    async fn stop_aborts_stuck_supervisor_and_kills_group() {
        let config: ExtensionConfig = serde_json::from_value(serde_json::json!({
            "type": "stdio",
            "cmd": "/bin/sh",
            "args": ["-c", "sleep 1000 & exec sleep 1000"],
        }))
        .unwrap();
        let slot = Slot::new(Definition {
            name: "stuck".to_owned(),
            source: Source::Config,
            config: config.clone(),
            file: None,
        });
        let spawned = process::spawn(
            "stuck",
            &config,
            slot.tail.clone(),
            slot.server_group.clone(),
        );
        let (server, _stdout, _stdin) = spawned.unwrap();
        let group = Pid::from_raw(server.pid());
        // A supervisor that ignores its stop token and keeps its server running.
        let task = tokio::spawn(async move {
            let _server = server;
            std::future::pending::<()>().await;
        });
        let member = Member {
            slot,
            stop: CancellationToken::new(),
            task: Some(task),
        };

        let (slot, aborted) = member
            .stop(Instant::now() + Duration::from_millis(200))
            .await;
        assert!(aborted);
        assert_eq!(slot.status().state, State::Stopped);
        assert!(!process::has_live_member(group), "group {group} is alive");
        assert!(
            nix::sys::wait::waitpid(group, Some(nix::sys::wait::WaitPidFlag::WNOHANG)).is_err(),
            "the server was not reaped"
        );
    }
}

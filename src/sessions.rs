//! Sessions: conversations that belong to a key, survive restarts and run one turn at a
//! time, with live state kept in memory while they are in use.

pub mod events;
mod runner;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::agent::{Message, ProviderError, ProviderPool, ToolChoice, TurnEnd, Usage};
use crate::config::{Caller, ConfigHandle, Role as KeyRole, Snapshot};
use crate::limits::{TurnCounter, TurnPermit};
use crate::store::{MessageRecord, NewSession, SessionLock, SessionRecord, Store, StoreError};
use crate::tools::ToolSource;
pub use events::{EventLog, StreamEvent};

/// Maximum session title length, in characters, taken from the first prompt.
const TITLE_CHARS: usize = 80;
/// Maximum length of a session's `model`, in characters. Provider model names are far
/// shorter, so the cap only keeps a mistaken value out of the store and later requests.
const MAX_MODEL_CHARS: usize = 256;

/// A session operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No such session, or it belongs to another key.
    #[error("session {0} not found")]
    NotFound(String),
    /// The caller has no session to continue.
    #[error("no session to continue; start one with POST /session/start or pass session_id")]
    NoSession,
    /// A turn is already running in the session, on this replica or another.
    #[error("session {0} is already running a turn; wait for it or cancel it")]
    Busy(String),
    /// A concurrency limit on turns is reached.
    #[error(transparent)]
    TooManyTurns(#[from] crate::limits::TurnLimitError),
    /// The session has ended.
    #[error("session {0} has ended; start a new session")]
    Ended(String),
    /// The request is invalid.
    #[error("{0}")]
    Invalid(String),
    /// The provider failed.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Options of a new session or turn beyond the prompt.
#[derive(Debug, Clone, Default)]
pub struct TurnOptions {
    /// Added to the system prompt for this session.
    pub instructions: Option<String>,
    /// Model for this session.
    pub model: Option<String>,
    /// Extensions this session may use.
    pub extensions: Option<Vec<String>>,
    /// Tool choice for this turn.
    pub tool_choice: Option<ToolChoice>,
}

/// The result of a finished turn.
#[derive(Debug, Clone)]
pub struct TurnReport {
    /// The last assistant text.
    pub answer: String,
    /// Reason the turn ended.
    pub end: TurnEnd,
    /// Tokens used.
    pub usage: Usage,
}

/// A running turn: its events and its result.
#[derive(Debug)]
pub struct TurnTicket {
    /// Session id.
    pub session_id: String,
    /// Events as they happen.
    pub events: Arc<EventLog>,
    /// Cancels the turn.
    pub cancel: CancellationToken,
    /// The result, once the turn ends.
    pub result: oneshot::Receiver<Result<TurnReport, SessionError>>,
}

/// The conversation of a live session, locked for the length of a turn.
#[derive(Debug, Default)]
struct Conversation {
    history: Vec<Message>,
    /// Store sequence number of each history message.
    seqs: Vec<Option<i64>>,
}

/// In-memory state of a session in use.
#[derive(Debug)]
struct LiveSession {
    record: Mutex<SessionRecord>,
    conversation: Arc<tokio::sync::Mutex<Conversation>>,
    running: Mutex<Option<(CancellationToken, Arc<EventLog>)>>,
    last_used: Mutex<Instant>,
}

impl LiveSession {
    fn touch(&self) {
        *lock(&self.last_used) = Instant::now();
    }

    fn record(&self) -> SessionRecord {
        lock(&self.record).clone()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Owns every session: the store, the live state and the turns.
pub struct SessionManager {
    store: Store,
    config: ConfigHandle,
    providers: ProviderPool,
    tools: Arc<dyn ToolSource>,
    metrics: Arc<crate::metrics::Metrics>,
    live: Mutex<HashMap<String, Arc<LiveSession>>>,
    turns: Arc<TurnCounter>,
}

impl std::fmt::Debug for SessionManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionManager")
            .field("live", &lock(&self.live).len())
            .finish_non_exhaustive()
    }
}

impl SessionManager {
    /// Creates the manager.
    pub fn new(
        store: Store,
        config: ConfigHandle,
        tools: Arc<dyn ToolSource>,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Self {
        Self {
            store,
            config,
            providers: ProviderPool::default(),
            tools,
            metrics,
            live: Mutex::new(HashMap::new()),
            turns: Arc::default(),
        }
    }

    /// Returns the store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Creates a session for `caller` and starts its first turn. The whole turn uses
    /// `snapshot`, the config that the request took when it arrived.
    pub async fn start(
        self: &Arc<Self>,
        caller: &Caller,
        snapshot: Arc<Snapshot>,
        prompt: String,
        options: TurnOptions,
    ) -> Result<TurnTicket, SessionError> {
        validate_prompt(&prompt)?;
        if let Some(model) = &options.model {
            validate_model(model)?;
        }
        if let Some(names) = &options.extensions {
            self.check_extensions(names)?;
        }
        self.check_tool_choice(options.tool_choice.as_ref(), options.extensions.as_deref())?;
        let permit = self.turn_permit(caller, &snapshot)?;
        let record = self
            .store
            .create_session(NewSession {
                owner: caller.name.clone(),
                title: prompt.chars().take(TITLE_CHARS).collect(),
                provider: snapshot.config.provider.clone(),
                model: options
                    .model
                    .clone()
                    .unwrap_or_else(|| snapshot.config.model.clone()),
                model_override: options.model.clone(),
                instructions: options.instructions.clone().unwrap_or_default(),
                extensions: options.extensions.clone(),
            })
            .await?;
        tracing::info!(session_id = %record.id, owner = %caller.name, "session started");
        let live = Arc::new(LiveSession {
            record: Mutex::new(record.clone()),
            conversation: Arc::default(),
            running: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        });
        lock(&self.live).insert(record.id.clone(), live.clone());
        self.begin_turn(live, snapshot, prompt, options.tool_choice, permit)
            .await
    }

    /// Starts a turn in session `id`, or in the caller's latest session when `None`. The
    /// whole turn uses `snapshot`.
    pub async fn reply(
        self: &Arc<Self>,
        caller: &Caller,
        snapshot: Arc<Snapshot>,
        id: Option<&str>,
        prompt: String,
        tool_choice: Option<ToolChoice>,
    ) -> Result<TurnTicket, SessionError> {
        validate_prompt(&prompt)?;
        let id = match id {
            Some(id) => id.to_owned(),
            None => {
                let latest = self.store.latest_session(&caller.name).await?;
                latest.ok_or(SessionError::NoSession)?.id
            }
        };
        let live = self.live_session(caller, &id, false).await?;
        let extensions = live.record().extensions;
        self.check_tool_choice(tool_choice.as_ref(), extensions.as_deref())?;
        let permit = self.turn_permit(caller, &snapshot)?;
        self.begin_turn(live, snapshot, prompt, tool_choice, permit)
            .await
    }

    /// Counts a turn of `caller` against the concurrency limits of `snapshot`.
    fn turn_permit(
        &self,
        caller: &Caller,
        snapshot: &Snapshot,
    ) -> Result<TurnPermit, SessionError> {
        let key_max = snapshot
            .config
            .key_limits(&caller.name)
            .max_concurrent_turns;
        let daemon_max = snapshot.config.limits.max_concurrent_turns;
        let permit = self
            .turns
            .try_acquire(&caller.name, key_max, daemon_max)
            .inspect_err(|error| {
                self.metrics
                    .limit_rejections
                    .with_label_values(&[caller.name.as_str(), "turns"])
                    .inc();
                tracing::debug!(key_name = %caller.name, %error, "turn rejected by a limit");
            })?;
        Ok(permit)
    }

    /// Returns the events of the running or last turn of session `id`, for a client that
    /// reconnects; `None` when the session has no buffered turn.
    pub async fn resume(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<Option<Arc<EventLog>>, SessionError> {
        let live = self.live_session(caller, id, false).await?;
        let running = lock(&live.running).as_ref().map(|(_, log)| log.clone());
        Ok(running)
    }

    /// Cancels the running turn of session `id`. Returns whether one was running.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<bool, SessionError> {
        let live = self.live_session(caller, id, false).await?;
        let running = lock(&live.running).clone();
        match running {
            Some((cancel, log)) if !log.is_finished() => {
                cancel.cancel();
                tracing::info!(session_id = id, "turn cancelled by request");
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// Replaces the session's history with a summary written by the provider, with the
    /// provider settings of `snapshot`, and returns it.
    pub async fn summarize(
        &self,
        caller: &Caller,
        snapshot: &Snapshot,
        id: &str,
    ) -> Result<String, SessionError> {
        let live = self.live_session(caller, id, false).await?;
        let mut conversation = live
            .conversation
            .clone()
            .try_lock_owned()
            .map_err(|_| SessionError::Busy(id.to_owned()))?;
        let session_lock = self.lock_and_refresh(&live, &mut conversation).await?;
        let summary = runner::summarize(self, snapshot, &live.record(), &mut conversation).await;
        session_lock.release().await;
        summary
    }

    /// Ends session `id`: cancels any running turn and releases its live state. Its history
    /// stays in the store.
    pub async fn end(&self, caller: &Caller, id: &str) -> Result<(), SessionError> {
        let live = self.live_session(caller, id, false).await?;
        if let Some((cancel, _)) = lock(&live.running).as_ref() {
            cancel.cancel();
        }
        self.store.set_state(id, "ended").await?;
        lock(&self.live).remove(id);
        tracing::info!(session_id = id, "session ended");
        Ok(())
    }

    /// Deletes session `id` and its messages.
    pub async fn delete(&self, caller: &Caller, id: &str) -> Result<(), SessionError> {
        let live = self.live_session(caller, id, false).await?;
        if let Some((cancel, _)) = lock(&live.running).as_ref() {
            cancel.cancel();
        }
        // Wait for a cancelled turn to stop writing before its rows are deleted. The live
        // state stays in the map until the rows are gone, so a reply meanwhile finds the
        // conversation locked (409) instead of loading the session anew from rows about to
        // be deleted.
        let _conversation = live.conversation.lock().await;
        self.store.delete_session(id).await?;
        lock(&self.live).remove(id);
        tracing::info!(session_id = id, "session deleted");
        Ok(())
    }

    /// Returns session `id` and up to `limit` messages after `after`. Admin keys may read
    /// every session.
    pub async fn get(
        &self,
        caller: &Caller,
        id: &str,
        after: i64,
        limit: i64,
    ) -> Result<(SessionRecord, Vec<MessageRecord>), SessionError> {
        let record = self.owned_record(caller, id, true).await?;
        let messages = self.store.messages(id, after, limit).await?;
        Ok((record, messages))
    }

    /// Lists the caller's sessions, newest first.
    pub async fn list(
        &self,
        caller: &Caller,
        cursor: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, SessionError> {
        Ok(self
            .store
            .list_sessions(Some(&caller.name), cursor, limit)
            .await?)
    }

    /// Returns the number of stored messages of each live session the caller may see.
    pub fn live_message_counts(&self, caller: &Caller) -> HashMap<String, i64> {
        lock(&self.live)
            .iter()
            .filter(|(_, live)| {
                caller.role == KeyRole::Admin || lock(&live.record).owner == caller.name
            })
            .map(|(id, live)| (id.clone(), lock(&live.record).message_count))
            .collect()
    }

    /// Returns how many sessions have live state, and how many are running a turn.
    pub fn live_counts(&self) -> (usize, usize) {
        let live = lock(&self.live);
        let running = live
            .values()
            .filter(|session| {
                lock(&session.running)
                    .as_ref()
                    .is_some_and(|(_, log)| !log.is_finished())
            })
            .count();
        (live.len(), running)
    }

    /// Releases the live state of sessions idle longer than `sessions.idle_timeout_secs`.
    /// Returns how many were released.
    pub fn release_idle(&self) -> usize {
        let idle = Duration::from_secs(self.config.current().config.sessions.idle_timeout_secs);
        let mut live = lock(&self.live);
        let before = live.len();
        live.retain(|_, session| {
            let busy = session.conversation.try_lock().is_err();
            busy || lock(&session.last_used).elapsed() < idle
        });
        before - live.len()
    }

    /// Cancels every running turn, for shutdown after the drain deadline.
    pub fn cancel_all(&self) {
        for session in lock(&self.live).values() {
            if let Some((cancel, _)) = lock(&session.running).as_ref() {
                cancel.cancel();
            }
        }
    }

    fn check_extensions(&self, names: &[String]) -> Result<(), SessionError> {
        let available: Vec<String> = self
            .tools
            .tools()
            .into_iter()
            .map(|tool| tool.extension)
            .collect();
        let unknown: Vec<&String> = names
            .iter()
            .filter(|name| !available.contains(name))
            .collect();
        if unknown.is_empty() {
            Ok(())
        } else {
            Err(SessionError::Invalid(format!(
                "unknown or stopped extensions {unknown:?}; GET /extensions/list shows the running ones"
            )))
        }
    }

    /// Rejects a `tool_choice` that names a tool the session may not use: one that no
    /// running extension offers, that `available_tools` hides, or whose extension is not
    /// among the session's `extensions`.
    fn check_tool_choice(
        &self,
        choice: Option<&ToolChoice>,
        extensions: Option<&[String]>,
    ) -> Result<(), SessionError> {
        let Some(ToolChoice::Tool(name)) = choice else {
            return Ok(());
        };
        let offered = self
            .tools
            .tools()
            .into_iter()
            .filter(|tool| extensions.is_none_or(|names| names.contains(&tool.extension)))
            .any(|tool| tool.qualified_name() == *name);
        if offered {
            return Ok(());
        }
        Err(SessionError::Invalid(format!(
            "tool_choice names tool {name:?}, which this session may not use; GET /extensions \
             lists the tools of each running extension, named extension__tool, and a session \
             started with extensions may use only theirs"
        )))
    }

    /// Returns the session if the caller owns it, or may read it as an admin.
    async fn owned_record(
        &self,
        caller: &Caller,
        id: &str,
        admin_may_read: bool,
    ) -> Result<SessionRecord, SessionError> {
        let record = self
            .store
            .session(id)
            .await?
            .ok_or_else(|| SessionError::NotFound(id.to_owned()))?;
        let allowed =
            record.owner == caller.name || (admin_may_read && caller.role == KeyRole::Admin);
        if allowed {
            Ok(record)
        } else {
            Err(SessionError::NotFound(id.to_owned()))
        }
    }

    /// Returns the live state of session `id`, loading it from the store if needed.
    async fn live_session(
        &self,
        caller: &Caller,
        id: &str,
        admin_may_read: bool,
    ) -> Result<Arc<LiveSession>, SessionError> {
        let existing = lock(&self.live).get(id).cloned();
        if let Some(live) = existing {
            let owner = lock(&live.record).owner.clone();
            if owner != caller.name && !(admin_may_read && caller.role == KeyRole::Admin) {
                return Err(SessionError::NotFound(id.to_owned()));
            }
            live.touch();
            return Ok(live);
        }
        let record = self.owned_record(caller, id, admin_may_read).await?;
        let stored = self.store.history(id).await?;
        let conversation = Conversation {
            seqs: stored.iter().map(|(seq, _)| Some(*seq)).collect(),
            history: stored.into_iter().map(|(_, message)| message).collect(),
        };
        let live = Arc::new(LiveSession {
            record: Mutex::new(record),
            conversation: Arc::new(tokio::sync::Mutex::new(conversation)),
            running: Mutex::new(None),
            last_used: Mutex::new(Instant::now()),
        });
        // Another request may have loaded it meanwhile; keep the first copy.
        let mut map = lock(&self.live);
        let entry = map.entry(id.to_owned()).or_insert(live);
        Ok(entry.clone())
    }

    async fn begin_turn(
        self: &Arc<Self>,
        live: Arc<LiveSession>,
        snapshot: Arc<Snapshot>,
        prompt: String,
        tool_choice: Option<ToolChoice>,
        permit: TurnPermit,
    ) -> Result<TurnTicket, SessionError> {
        let record = live.record();
        if record.state == "ended" {
            return Err(SessionError::Ended(record.id));
        }
        let mut conversation = live
            .conversation
            .clone()
            .try_lock_owned()
            .map_err(|_| SessionError::Busy(record.id.clone()))?;
        let session_lock = self.lock_and_refresh(&live, &mut conversation).await?;
        let guards = runner::TurnGuards {
            session_lock,
            _permit: permit,
        };
        runner::begin(
            self.clone(),
            live,
            conversation,
            runner::TurnInput {
                snapshot,
                prompt,
                tool_choice,
            },
            guards,
        )
        .await
    }

    /// Takes the session's turn lock in the store, then reloads the session and its history
    /// if another replica changed them since this one cached them.
    async fn lock_and_refresh(
        &self,
        live: &LiveSession,
        conversation: &mut Conversation,
    ) -> Result<SessionLock, SessionError> {
        let id = live.record().id;
        let session_lock = self
            .store
            .try_lock_session(&id)
            .await?
            .ok_or_else(|| SessionError::Busy(id.clone()))?;
        match self.refresh(live, conversation).await {
            Ok(()) => Ok(session_lock),
            Err(error) => {
                session_lock.release().await;
                Err(error)
            }
        }
    }

    async fn refresh(
        &self,
        live: &LiveSession,
        conversation: &mut Conversation,
    ) -> Result<(), SessionError> {
        let cached = live.record();
        let Some(stored) = self.store.session(&cached.id).await? else {
            lock(&self.live).remove(&cached.id);
            return Err(SessionError::NotFound(cached.id));
        };
        if stored.state == "ended" {
            let id = stored.id.clone();
            *lock(&live.record) = stored;
            return Err(SessionError::Ended(id));
        }
        if stored.message_count != cached.message_count {
            let history = self.store.history(&cached.id).await?;
            tracing::debug!(
                session_id = %cached.id,
                cached = cached.message_count,
                stored = stored.message_count,
                "reloading a session history changed by another replica"
            );
            conversation.seqs = history.iter().map(|(seq, _)| Some(*seq)).collect();
            conversation.history = history.into_iter().map(|(_, message)| message).collect();
        }
        *lock(&live.record) = stored;
        Ok(())
    }
}

fn validate_model(model: &str) -> Result<(), SessionError> {
    if model.trim().is_empty() {
        return Err(SessionError::Invalid(
            "model must not be empty; omit the model field to use the configured model".to_owned(),
        ));
    }
    let length = model.chars().count();
    if length > MAX_MODEL_CHARS {
        return Err(SessionError::Invalid(format!(
            "model is {length} characters long, over the maximum of {MAX_MODEL_CHARS}; send \
             the provider's model name, or omit the field to use the configured model"
        )));
    }
    Ok(())
}

fn validate_prompt(prompt: &str) -> Result<(), SessionError> {
    if prompt.trim().is_empty() {
        return Err(SessionError::Invalid(
            "prompt must not be empty; send the instruction in the prompt field".to_owned(),
        ));
    }
    Ok(())
}

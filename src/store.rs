//! The session store: SQLite by default, PostgreSQL for shared deployments, through one
//! query code path on sqlx's `Any` driver.

mod migrations;
mod session_lock;
mod usage;

pub use session_lock::SessionLock;
pub use usage::KeyUsage;

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Row};

use crate::agent::{ContentPart, Message, Role, Usage};

/// Database kind behind a store URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A stored value could not be decoded.
    #[error("stored data is invalid: {0}")]
    Corrupt(String),
    /// The store URL or file could not be used.
    #[error("{0}")]
    Setup(String),
    /// The session was deleted, by another request or replica, while a message for it was
    /// being stored.
    #[error("session {0} was deleted while a message was being stored")]
    SessionDeleted(String),
}

/// Stored metadata of one session.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SessionRecord {
    /// Session id, a UUID.
    pub id: String,
    /// Name of the key that created it.
    pub owner: String,
    /// The start of the first prompt.
    pub title: String,
    /// Creation time, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// Time of the last stored message, milliseconds since the Unix epoch.
    pub updated_at: i64,
    /// Provider of the last turn.
    pub provider: String,
    /// Model of the last turn.
    pub model: String,
    /// Model chosen when the session started; the config's model applies when null.
    pub model_override: Option<String>,
    /// Instructions added to the system prompt.
    pub instructions: String,
    /// Extensions the session may use; all when null.
    pub extensions: Option<Vec<String>>,
    /// Prompt tokens used by all turns.
    pub input_tokens: i64,
    /// Generated tokens of all turns.
    pub output_tokens: i64,
    /// Stored messages.
    pub message_count: i64,
    /// `active` or `ended`.
    pub state: String,
}

/// One stored message.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MessageRecord {
    /// Position in the session, from 1.
    pub seq: i64,
    /// `user`, `assistant` or `tool`.
    #[schema(value_type = String)]
    pub role: Role,
    /// Content parts.
    #[schema(value_type = Vec<Object>)]
    pub content: Vec<ContentPart>,
    /// Time stored, milliseconds since the Unix epoch.
    pub created_at: i64,
    /// For a summary message: the last message it replaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary_through: Option<i64>,
}

/// Values of a new session.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Key name of the owner.
    pub owner: String,
    /// Title.
    pub title: String,
    /// Provider name.
    pub provider: String,
    /// Model name.
    pub model: String,
    /// Model chosen by the client, if any.
    pub model_override: Option<String>,
    /// Extra instructions.
    pub instructions: String,
    /// Allowed extensions.
    pub extensions: Option<Vec<String>>,
}

/// Connections for turn locks on PostgreSQL, apart from the main pool so that running
/// turns cannot take the connections their messages are stored with.
const LOCK_CONNECTIONS: u32 = 64;

/// The session store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// PostgreSQL only: connections that hold turn locks.
    lock_pool: Option<AnyPool>,
}

/// Returns [`StoreError::SessionDeleted`] for a foreign key violation, which an insert of a
/// message for a deleted session raises, and [`StoreError::Database`] for other errors.
fn deleted_session_error(error: sqlx::Error, session_id: &str) -> StoreError {
    let deleted = error
        .as_database_error()
        .is_some_and(|database| database.is_foreign_key_violation());
    if deleted {
        StoreError::SessionDeleted(session_id.to_owned())
    } else {
        StoreError::Database(error)
    }
}

/// Returns the current time in milliseconds since the Unix epoch.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

const SESSION_COLUMNS: &str = "id, owner, title, created_at, updated_at, provider, model, \
    model_override, instructions, extensions, input_tokens, output_tokens, message_count, state";

impl Store {
    /// Connects to `url`, creating a SQLite file and its directory if needed, and applies
    /// migrations.
    pub async fn open(url: &str, working_dir: &Path) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            (Backend::Sqlite, sqlite_url(url, working_dir)?)
        } else {
            (Backend::Postgres, url.to_owned())
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let lock_pool = (backend == Backend::Postgres).then(|| {
            AnyPoolOptions::new()
                .max_connections(LOCK_CONNECTIONS)
                .min_connections(0)
                .connect_lazy_with(options.clone())
        });
        let pool = AnyPoolOptions::new()
            .max_connections(match backend {
                Backend::Sqlite => 4,
                Backend::Postgres => 16,
            })
            .after_connect(move |connection, _| {
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        use sqlx::Executor;
                        connection.execute("PRAGMA foreign_keys = ON").await?;
                        connection.execute("PRAGMA busy_timeout = 5000").await?;
                        connection.execute("PRAGMA synchronous = NORMAL").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        if backend == Backend::Sqlite {
            // WAL lets readers work beside the writer and survives a crash mid-write.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&pool)
                .await?;
        }
        let applied = migrations::apply(&pool, backend).await?;
        tracing::info!(
            ?backend,
            migrations_applied = applied,
            "session store ready"
        );
        Ok(Self {
            pool,
            backend,
            lock_pool,
        })
    }

    /// Begins a transaction that writes. On SQLite it takes the write lock at once with
    /// `BEGIN IMMEDIATE`: a deferred transaction that reads first fails with "database is
    /// locked" when another connection writes before it, without waiting `busy_timeout`.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        let tx = match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        };
        Ok(tx)
    }

    /// Returns the backend kind.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Closes the connections.
    pub async fn close(&self) {
        if let Some(lock_pool) = &self.lock_pool {
            lock_pool.close().await;
        }
        self.pool.close().await;
    }

    /// Creates a session and returns it.
    pub async fn create_session(&self, new: NewSession) -> Result<SessionRecord, StoreError> {
        let now = now_millis();
        let record = SessionRecord {
            id: uuid::Uuid::new_v4().to_string(),
            owner: new.owner,
            title: new.title,
            created_at: now,
            updated_at: now,
            provider: new.provider,
            model: new.model,
            model_override: new.model_override,
            instructions: new.instructions,
            extensions: new.extensions,
            input_tokens: 0,
            output_tokens: 0,
            message_count: 0,
            state: "active".to_owned(),
        };
        let extensions = record
            .extensions
            .as_ref()
            .map(|list| serde_json::to_string(list).unwrap_or_default());
        sqlx::query(
            "INSERT INTO sessions (id, owner, title, created_at, updated_at, provider, model, \
             model_override, instructions, extensions, input_tokens, output_tokens, \
             message_count, state) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 0, 0, 0, $11)",
        )
        .bind(&record.id)
        .bind(&record.owner)
        .bind(&record.title)
        .bind(record.created_at)
        .bind(record.updated_at)
        .bind(&record.provider)
        .bind(&record.model)
        .bind(&record.model_override)
        .bind(&record.instructions)
        .bind(extensions)
        .bind(&record.state)
        .execute(&self.pool)
        .await?;
        Ok(record)
    }

    /// Returns the session `id`, or `None`.
    pub async fn session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let query = format!("SELECT {SESSION_COLUMNS} FROM sessions WHERE id = $1");
        let row = sqlx::query(&query)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| session_from_row(&row)).transpose()
    }

    /// Returns the most recently updated session of `owner`.
    pub async fn latest_session(&self, owner: &str) -> Result<Option<SessionRecord>, StoreError> {
        let query = format!(
            "SELECT {SESSION_COLUMNS} FROM sessions WHERE owner = $1 AND state = 'active' \
             ORDER BY updated_at DESC, id DESC LIMIT 1"
        );
        let row = sqlx::query(&query)
            .bind(owner)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|row| session_from_row(&row)).transpose()
    }

    /// Lists sessions newest first, of `owner` or of everyone when `None`, after `cursor`
    /// (the `created_at` and `id` of the last session of the previous page).
    pub async fn list_sessions(
        &self,
        owner: Option<&str>,
        cursor: Option<(i64, String)>,
        limit: i64,
    ) -> Result<Vec<SessionRecord>, StoreError> {
        // Separate queries per filter and a row comparison for the cursor let the
        // (owner, created_at, id) index return rows in order instead of sorting every match.
        let after = match cursor {
            Some(_) => "(created_at, id) < ($1, $2)",
            None => "$1 = $1 AND $2 = $2",
        };
        let query = match owner {
            Some(_) => format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE owner = $3 AND {after} \
                 ORDER BY created_at DESC, id DESC LIMIT $4"
            ),
            None => format!(
                "SELECT {SESSION_COLUMNS} FROM sessions WHERE $3 = $3 AND {after} \
                 ORDER BY created_at DESC, id DESC LIMIT $4"
            ),
        };
        let (cursor_time, cursor_id) = cursor.unwrap_or((0, String::new()));
        let rows = sqlx::query(&query)
            .bind(cursor_time)
            .bind(cursor_id)
            .bind(owner.unwrap_or(""))
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(session_from_row).collect()
    }

    /// Deletes a session and its messages. Returns whether it existed.
    pub async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("DELETE FROM messages WHERE session_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let deleted = sqlx::query("DELETE FROM sessions WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(deleted.rows_affected() > 0)
    }

    /// Sets the state of a session.
    pub async fn set_state(&self, id: &str, state: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE sessions SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state)
            .bind(now_millis())
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Stores one finished message in its own transaction and returns its sequence number.
    pub async fn append_message(
        &self,
        session_id: &str,
        message: &Message,
        summary_through: Option<i64>,
    ) -> Result<i64, StoreError> {
        let content = serde_json::to_string(&message.content)
            .map_err(|error| StoreError::Corrupt(error.to_string()))?;
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        // The insert computes the sequence number itself, so the transaction needs no read
        // before its first write.
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO messages (session_id, seq, role, content, created_at, summary_through) \
             SELECT $1, COALESCE(MAX(seq), 0) + 1, $2, $3, $4, $5 FROM messages \
             WHERE session_id = $1 RETURNING seq",
        )
        .bind(session_id)
        .bind(role_name(message.role))
        .bind(content)
        .bind(now)
        .bind(summary_through)
        .fetch_one(&mut *tx)
        .await
        .map_err(|error| deleted_session_error(error, session_id))?;
        sqlx::query(
            "UPDATE sessions SET updated_at = $1, message_count = message_count + 1 \
             WHERE id = $2",
        )
        .bind(now)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Adds a turn's token usage to the session and to its owner's key, and records the
    /// provider and model used.
    pub async fn record_turn(
        &self,
        session_id: &str,
        usage: Usage,
        provider: &str,
        model: &str,
    ) -> Result<(), StoreError> {
        let input = i64::try_from(usage.input_tokens).unwrap_or(i64::MAX);
        let output = i64::try_from(usage.output_tokens).unwrap_or(i64::MAX);
        let mut tx = self.begin_write().await?;
        sqlx::query(
            "UPDATE sessions SET input_tokens = input_tokens + $1, \
             output_tokens = output_tokens + $2, provider = $3, model = $4 WHERE id = $5",
        )
        .bind(input)
        .bind(output)
        .bind(provider)
        .bind(model)
        .bind(session_id)
        .execute(&mut *tx)
        .await?;
        usage::add_key_usage(&mut tx, session_id, input, output).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Returns up to `limit` messages of a session with `seq` above `after`, in order.
    pub async fn messages(
        &self,
        session_id: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, role, content, created_at, summary_through FROM messages \
             WHERE session_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
        )
        .bind(session_id)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_from_row).collect()
    }

    /// Returns the conversation to send to the provider: the latest summary, if any, and
    /// every message after the ones it replaces, with their sequence numbers.
    pub async fn history(&self, session_id: &str) -> Result<Vec<(i64, Message)>, StoreError> {
        let records = self.messages(session_id, 0, i64::MAX).await?;
        let latest_summary = records
            .iter()
            .rev()
            .find(|record| record.summary_through.is_some());
        let history = match latest_summary {
            None => records.into_iter().map(into_history_entry).collect(),
            Some(summary) => {
                let through = summary.summary_through.unwrap_or(0);
                let summary_seq = summary.seq;
                let mut kept = vec![into_history_entry(summary.clone())];
                kept.extend(
                    records
                        .into_iter()
                        .filter(|r| {
                            r.seq > through && r.seq != summary_seq && r.summary_through.is_none()
                        })
                        .map(into_history_entry),
                );
                kept
            }
        };
        Ok(history)
    }

    /// Checks the database for corruption and broken references; returns the problems.
    pub async fn integrity_check(&self) -> Result<Vec<String>, StoreError> {
        let mut problems = Vec::new();
        if self.backend == Backend::Sqlite {
            let result: String = sqlx::query_scalar("PRAGMA integrity_check")
                .fetch_one(&self.pool)
                .await?;
            if result != "ok" {
                problems.push(result);
            }
        }
        let orphans: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM messages m LEFT JOIN sessions s ON s.id = m.session_id \
             WHERE s.id IS NULL",
        )
        .fetch_one(&self.pool)
        .await?;
        if orphans > 0 {
            problems.push(format!("{orphans} messages belong to no session"));
        }
        let miscounted: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM sessions s WHERE s.message_count <> \
             (SELECT COUNT(*) FROM messages m WHERE m.session_id = s.id)",
        )
        .fetch_one(&self.pool)
        .await?;
        if miscounted > 0 {
            problems.push(format!("{miscounted} sessions have a wrong message count"));
        }
        let records = sqlx::query("SELECT content FROM messages")
            .fetch_all(&self.pool)
            .await?;
        for row in records {
            let content: String = row.try_get("content")?;
            if serde_json::from_str::<Vec<ContentPart>>(&content).is_err() {
                problems.push("a message has content that is not valid JSON".to_owned());
            }
        }
        Ok(problems)
    }
}

fn into_history_entry(record: MessageRecord) -> (i64, Message) {
    (
        record.seq,
        Message {
            role: record.role,
            content: record.content,
        },
    )
}

/// Turns `sqlite://PATH` into an absolute `sqlite://` URL that creates the file, and creates
/// its directory.
fn sqlite_url(url: &str, working_dir: &Path) -> Result<String, StoreError> {
    let rest = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path == ":memory:" {
        return Ok("sqlite::memory:".to_owned());
    }
    let path = working_dir.join(path);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|error| {
            StoreError::Setup(format!(
                "cannot create the store directory {}: {error}; fix store.url or the permissions",
                parent.display()
            ))
        })?;
    }
    let query = if query.is_empty() {
        "mode=rwc".to_owned()
    } else {
        query.to_owned()
    };
    Ok(format!("sqlite://{}?{query}", path.display()))
}

fn role_name(role: Role) -> &'static str {
    match role {
        Role::User => "user",
        Role::Assistant => "assistant",
        Role::Tool => "tool",
    }
}

fn parse_role(name: &str) -> Result<Role, StoreError> {
    match name {
        "user" => Ok(Role::User),
        "assistant" => Ok(Role::Assistant),
        "tool" => Ok(Role::Tool),
        other => Err(StoreError::Corrupt(format!("unknown role {other:?}"))),
    }
}

fn session_from_row(row: &sqlx::any::AnyRow) -> Result<SessionRecord, StoreError> {
    let extensions: Option<String> = row.try_get("extensions")?;
    let extensions = extensions
        .map(|text| serde_json::from_str(&text))
        .transpose()
        .map_err(|error| StoreError::Corrupt(format!("session extensions: {error}")))?;
    Ok(SessionRecord {
        id: row.try_get("id")?,
        owner: row.try_get("owner")?,
        title: row.try_get("title")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        provider: row.try_get("provider")?,
        model: row.try_get("model")?,
        model_override: row.try_get("model_override")?,
        instructions: row.try_get("instructions")?,
        extensions,
        input_tokens: row.try_get("input_tokens")?,
        output_tokens: row.try_get("output_tokens")?,
        message_count: row.try_get("message_count")?,
        state: row.try_get("state")?,
    })
}

fn message_from_row(row: &sqlx::any::AnyRow) -> Result<MessageRecord, StoreError> {
    let role: String = row.try_get("role")?;
    let content: String = row.try_get("content")?;
    Ok(MessageRecord {
        seq: row.try_get("seq")?,
        role: parse_role(&role)?,
        content: serde_json::from_str(&content)
            .map_err(|error| StoreError::Corrupt(format!("message content: {error}")))?,
        created_at: row.try_get("created_at")?,
        summary_through: row.try_get("summary_through")?,
    })
}

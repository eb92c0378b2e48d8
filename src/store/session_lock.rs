//! Exclusive turns across replicas: a PostgreSQL session-level advisory lock per session,
//! held on a connection of its own for the length of a turn.
//!
//! The lock belongs to the database connection, so a replica that dies mid-turn releases
//! it as soon as the server detects the closed connection. On SQLite no lock is taken, because one
//! daemon owns the file and its in-process lock already allows one turn per session.

use sqlx::pool::PoolConnection;
use sqlx::{Any, AnyPool};

use super::{Store, StoreError};

/// Maps a session id to the 64-bit key of its advisory lock. Two ids with the same hash
/// would exclude each other, which at 64 bits is negligible.
const TRY_LOCK: &str = "SELECT pg_try_advisory_lock(hashtextextended($1, 0))";
const UNLOCK: &str = "SELECT pg_advisory_unlock(hashtextextended($1, 0))";

/// The right to run a turn in one session, until [`SessionLock::release`] or drop.
#[derive(Debug)]
pub struct SessionLock {
    held: Option<(PoolConnection<Any>, String)>,
}

impl Store {
    /// Takes the turn lock of session `id` without waiting. Returns `None` when another
    /// connection, of this replica or another, has it.
    pub async fn try_lock_session(&self, id: &str) -> Result<Option<SessionLock>, StoreError> {
        let Some(pool) = &self.lock_pool else {
            return Ok(Some(SessionLock { held: None }));
        };
        let mut connection = acquire(pool).await?;
        let acquired: bool = sqlx::query_scalar(TRY_LOCK)
            .bind(id)
            .fetch_one(&mut *connection)
            .await?;
        if acquired {
            Ok(Some(SessionLock {
                held: Some((connection, id.to_owned())),
            }))
        } else {
            Ok(None)
        }
    }
}

async fn acquire(pool: &AnyPool) -> Result<PoolConnection<Any>, StoreError> {
    pool.acquire().await.map_err(|error| match error {
        sqlx::Error::PoolTimedOut => StoreError::Setup(format!(
            "all {} connections for running turns are in use; lower \
             limits.max_concurrent_turns below that",
            pool.options().get_max_connections()
        )),
        other => StoreError::Database(other),
    })
}

impl SessionLock {
    /// Releases the lock and returns its connection to the pool. When the unlock fails, the
    /// connection is closed instead, which releases the lock on the server.
    pub async fn release(mut self) {
        let Some((mut connection, id)) = self.held.take() else {
            return;
        };
        let unlocked: Result<bool, sqlx::Error> = sqlx::query_scalar(UNLOCK)
            .bind(&id)
            .fetch_one(&mut *connection)
            .await;
        match unlocked {
            Ok(true) => {}
            Ok(false) => {
                tracing::error!(session_id = %id, "turn lock was not held at release; closing its connection");
                drop(connection.detach());
            }
            Err(error) => {
                tracing::error!(session_id = %id, %error, "cannot release the turn lock; closing its connection");
                drop(connection.detach());
            }
        }
    }
}

impl Drop for SessionLock {
    /// Closes the connection of a lock that was not released, for example after a panic,
    /// so the lock cannot stay held by a connection back in the pool.
    fn drop(&mut self) {
        if let Some((connection, _)) = self.held.take() {
            drop(connection.detach());
        }
    }
}

//! Token usage per API key, kept apart from sessions so that deleting a session does not
//! erase what its key used.

use serde::Serialize;
use sqlx::{Any, Transaction};

use super::{Store, StoreError};

/// Tokens used by every turn of one key, on every replica.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KeyUsage {
    /// Name of the key.
    pub key: String,
    /// Prompt tokens.
    pub input_tokens: i64,
    /// Generated tokens.
    pub output_tokens: i64,
}

/// Adds tokens to the key that owns `session_id`, inside the caller's transaction.
pub(super) async fn add_key_usage(
    tx: &mut Transaction<'_, Any>,
    session_id: &str,
    input: i64,
    output: i64,
) -> Result<(), StoreError> {
    // The WHERE clause also keeps SQLite from reading ON CONFLICT as part of the SELECT.
    sqlx::query(
        "INSERT INTO key_usage (key_name, input_tokens, output_tokens) \
         SELECT owner, $1, $2 FROM sessions WHERE id = $3 \
         ON CONFLICT (key_name) DO UPDATE SET \
         input_tokens = key_usage.input_tokens + excluded.input_tokens, \
         output_tokens = key_usage.output_tokens + excluded.output_tokens",
    )
    .bind(input)
    .bind(output)
    .bind(session_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Returns the tokens used by the key named `key`, zero when it has run no turn.
    pub async fn key_usage(&self, key: &str) -> Result<KeyUsage, StoreError> {
        let row: Option<(i64, i64)> =
            sqlx::query_as("SELECT input_tokens, output_tokens FROM key_usage WHERE key_name = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        let (input_tokens, output_tokens) = row.unwrap_or_default();
        Ok(KeyUsage {
            key: key.to_owned(),
            input_tokens,
            output_tokens,
        })
    }
}

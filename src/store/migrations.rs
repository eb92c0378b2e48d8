//! Schema migrations, one list per backend, applied in order at start.
//!
//! The sqlx `Any` driver supports only basic column types, so times are integer
//! milliseconds since the Unix epoch and JSON is stored as text.

use sqlx::AnyPool;
use sqlx::Executor;

use super::Backend;

/// One migration: a version and the statements that apply it.
struct Migration {
    version: i64,
    statements: &'static [&'static str],
}

const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        statements: &[
            "CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            model_override TEXT,
            instructions TEXT NOT NULL,
            extensions TEXT,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0,
            message_count INTEGER NOT NULL DEFAULT 0,
            state TEXT NOT NULL
        )",
            "CREATE INDEX sessions_by_owner_created ON sessions (owner, created_at, id)",
            "CREATE INDEX sessions_by_owner_updated ON sessions (owner, updated_at)",
            "CREATE TABLE messages (
            session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at INTEGER NOT NULL,
            summary_through INTEGER,
            PRIMARY KEY (session_id, seq)
        )",
        ],
    },
    Migration {
        version: 2,
        statements: &["CREATE TABLE key_usage (
            key_name TEXT PRIMARY KEY,
            input_tokens INTEGER NOT NULL DEFAULT 0,
            output_tokens INTEGER NOT NULL DEFAULT 0
        )"],
    },
];

const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        statements: &[
            "CREATE TABLE sessions (
            id TEXT PRIMARY KEY,
            owner TEXT NOT NULL,
            title TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            updated_at BIGINT NOT NULL,
            provider TEXT NOT NULL,
            model TEXT NOT NULL,
            model_override TEXT,
            instructions TEXT NOT NULL,
            extensions TEXT,
            input_tokens BIGINT NOT NULL DEFAULT 0,
            output_tokens BIGINT NOT NULL DEFAULT 0,
            message_count BIGINT NOT NULL DEFAULT 0,
            state TEXT NOT NULL
        )",
            "CREATE INDEX sessions_by_owner_created ON sessions (owner, created_at, id)",
            "CREATE INDEX sessions_by_owner_updated ON sessions (owner, updated_at)",
            "CREATE TABLE messages (
            session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
            seq BIGINT NOT NULL,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            created_at BIGINT NOT NULL,
            summary_through BIGINT,
            PRIMARY KEY (session_id, seq)
        )",
        ],
    },
    Migration {
        version: 2,
        statements: &["CREATE TABLE key_usage (
            key_name TEXT PRIMARY KEY,
            input_tokens BIGINT NOT NULL DEFAULT 0,
            output_tokens BIGINT NOT NULL DEFAULT 0
        )"],
    },
];

/// Applies the migrations of `backend` that the database has not seen, each in its own
/// transaction, and returns how many ran.
pub async fn apply(pool: &AnyPool, backend: Backend) -> Result<usize, sqlx::Error> {
    pool.execute(
        "CREATE TABLE IF NOT EXISTS goose_schema_migrations (
            version BIGINT PRIMARY KEY,
            applied_at BIGINT NOT NULL
        )",
    )
    .await?;
    let migrations = match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    };
    let mut applied = 0;
    for migration in migrations {
        let mut tx = pool.begin().await?;
        if backend == Backend::Postgres {
            // Replicas starting together must not apply the same migration twice.
            sqlx::query("LOCK TABLE goose_schema_migrations IN EXCLUSIVE MODE")
                .execute(&mut *tx)
                .await?;
        }
        let seen: Option<i64> =
            sqlx::query_scalar("SELECT version FROM goose_schema_migrations WHERE version = $1")
                .bind(migration.version)
                .fetch_optional(&mut *tx)
                .await?;
        if seen.is_some() {
            tx.rollback().await?;
            continue;
        }
        for statement in migration.statements {
            sqlx::query(statement).execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO goose_schema_migrations (version, applied_at) VALUES ($1, $2)")
            .bind(migration.version)
            .bind(super::now_millis())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        applied += 1;
    }
    Ok(applied)
}

//! Stored sessions for the listing benchmark, inserted with SQL into a store whose schema the
//! daemon has created, and the PostgreSQL schema that holds one run's tables.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use sqlx::{AnyPool, Executor};

/// Owner of the seeded sessions: the key name that goose-api gives a single `api_key`.
const OWNER: &str = "default";
/// Rows per INSERT statement.
const BATCH_ROWS: usize = 1000;
/// The seeded sessions were created this long before the run, one millisecond apart, so
/// that every session created by a turn is newer than all of them.
const SEED_AGE_MILLIS: i64 = 3_600_000;

/// Sessions inserted by [`insert_sessions`].
#[derive(Debug, Clone, Copy)]
pub struct SeededSessions {
    /// Number of sessions.
    pub count: u64,
    /// `created_at` of session 0, in milliseconds since the Unix epoch. Session `i` was
    /// created at `base_millis + i`.
    pub base_millis: i64,
    /// Time the inserts took, in one transaction.
    pub elapsed: Duration,
}

impl SeededSessions {
    /// Id of seeded session `index`.
    pub fn id(index: u64) -> String {
        format!("00000000-0000-4000-8000-{index:012x}")
    }

    /// The `GET /sessions` cursor that lists the sessions older than seeded session `index`:
    /// its `created_at` and id joined by `_`, as in `next_cursor`.
    pub fn cursor(&self, index: u64) -> String {
        let created_at = self.base_millis + i64::try_from(index).unwrap_or(i64::MAX);
        format!("{created_at}_{}", Self::id(index))
    }
}

/// Inserts `count` ended sessions without messages, owned by the single key, into the
/// `sessions` table at `url`. The daemon must have applied its migrations there.
pub async fn insert_sessions(url: &str, count: u64) -> anyhow::Result<SeededSessions> {
    sqlx::any::install_default_drivers();
    let pool = AnyPool::connect(url)
        .await
        .context("cannot connect to the session store to seed it")?;
    let base_millis = now_millis() - SEED_AGE_MILLIS;
    let started = Instant::now();
    let mut transaction = pool.begin().await.context("cannot begin a transaction")?;
    let mut index = 0;
    while index < count {
        let end = (index + BATCH_ROWS as u64).min(count);
        let statement = insert_statement(index..end, base_millis);
        transaction
            .execute(statement.as_str())
            .await
            .with_context(|| format!("cannot insert seeded sessions {index} to {end}"))?;
        index = end;
    }
    transaction
        .commit()
        .await
        .context("cannot commit the seeded sessions")?;
    let elapsed = started.elapsed();
    pool.close().await;
    Ok(SeededSessions {
        count,
        base_millis,
        elapsed,
    })
}

/// Builds one multi-row INSERT. Every value is generated here, so literals are safe.
fn insert_statement(indices: std::ops::Range<u64>, base_millis: i64) -> String {
    let rows: Vec<String> = indices
        .map(|index| {
            let created_at = base_millis + index as i64;
            format!(
                "('{id}', '{OWNER}', 'seeded session {index}', {created_at}, {created_at}, \
                 'bench', 'bench-model', NULL, '', NULL, 0, 0, 0, 'ended')",
                id = SeededSessions::id(index)
            )
        })
        .collect();
    format!(
        "INSERT INTO sessions (id, owner, title, created_at, updated_at, provider, model, \
         model_override, instructions, extensions, input_tokens, output_tokens, \
         message_count, state) VALUES {}",
        rows.join(", ")
    )
}

fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_millis()).unwrap_or(i64::MAX)
        })
}

/// A schema created for one run in a PostgreSQL database. [`PostgresSchema::drop_schema`]
/// removes it with its tables.
#[derive(Debug)]
pub struct PostgresSchema {
    database_url: String,
    name: String,
}

impl PostgresSchema {
    /// Creates the schema `goose_bench_<pid>_<milliseconds>` in the database at
    /// `database_url`, which must be on 127.0.0.1 or localhost.
    pub async fn create(database_url: &str) -> anyhow::Result<Self> {
        check_loopback(database_url)?;
        sqlx::any::install_default_drivers();
        let name = format!("goose_bench_{}_{}", std::process::id(), now_millis());
        let admin = AnyPool::connect(database_url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {database_url}"))?;
        admin
            .execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .with_context(|| format!("cannot create the schema {name}"))?;
        admin.close().await;
        Ok(Self {
            database_url: database_url.to_owned(),
            name,
        })
    }

    /// Name of the schema.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database URL with the schema as `search_path`, for `store.url`.
    pub fn scoped_url(&self) -> String {
        let separator = if self.database_url.contains('?') {
            '&'
        } else {
            '?'
        };
        format!(
            "{}{separator}options=-c%20search_path%3D{}",
            self.database_url, self.name
        )
    }

    /// Drops the schema and everything in it.
    pub async fn drop_schema(self) -> anyhow::Result<()> {
        let admin = AnyPool::connect(&self.database_url)
            .await
            .with_context(|| format!("cannot connect to PostgreSQL at {}", self.database_url))?;
        admin
            .execute(format!("DROP SCHEMA {} CASCADE", self.name).as_str())
            .await
            .with_context(|| format!("cannot drop the schema {}", self.name))?;
        admin.close().await;
        Ok(())
    }
}

/// Fails unless the URL's host is 127.0.0.1 or localhost, so that no run loads another
/// machine's database.
fn check_loopback(database_url: &str) -> anyhow::Result<()> {
    let after_scheme = database_url
        .strip_prefix("postgres://")
        .or_else(|| database_url.strip_prefix("postgresql://"))
        .with_context(|| format!("{database_url} is not a postgres:// URL"))?;
    let authority = after_scheme.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = host_port.split(':').next().unwrap_or_default();
    if host != "127.0.0.1" && host != "localhost" {
        bail!("the PostgreSQL host {host:?} is not 127.0.0.1 or localhost; pass a local URL");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_matches_next_cursor_format() {
        let seeded = SeededSessions {
            count: 10,
            base_millis: 1000,
            elapsed: Duration::ZERO,
        };
        assert_eq!(
            seeded.cursor(5),
            "1005_00000000-0000-4000-8000-000000000005"
        );
    }

    #[test]
    fn insert_statement_has_one_row_per_index() {
        let statement = insert_statement(3..5, 100);
        assert_eq!(statement.matches("'seeded session").count(), 2);
        assert!(statement.contains("103, 103"), "{statement}");
    }

    #[test]
    fn postgres_url_must_be_loopback() {
        assert!(check_loopback("postgres://postgres@127.0.0.1:5432/test").is_ok());
        assert!(check_loopback("postgres://u@localhost/test?sslmode=disable").is_ok());
        assert!(check_loopback("postgres://postgres@db.example.com:5432/test").is_err());
        assert!(check_loopback("mysql://127.0.0.1/test").is_err());
    }
}

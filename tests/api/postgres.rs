//! A PostgreSQL schema of its own for one test, in the database named by
//! `GOOSE_API_TEST_POSTGRES_URL`, dropped when the test ends.

use sqlx::Executor;

/// Variable naming a PostgreSQL database for these tests; `.ci/run` sets it.
pub const POSTGRES_VARIABLE: &str = "GOOSE_API_TEST_POSTGRES_URL";

/// A schema created for one test. Dropping it drops the schema and everything in it.
pub struct TestSchema {
    base_url: String,
    name: String,
    /// Store URL whose connections use only this schema.
    pub url: String,
}

impl TestSchema {
    /// Creates a schema, or prints why the test is skipped and returns `None` when the
    /// variable is unset.
    pub async fn create(test: &str) -> Option<Self> {
        let Ok(base_url) = std::env::var(POSTGRES_VARIABLE) else {
            eprintln!("skipping {test}: set {POSTGRES_VARIABLE} to a PostgreSQL database URL");
            return None;
        };
        sqlx::any::install_default_drivers();
        let name = format!("goose_test_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::AnyPool::connect(&base_url)
            .await
            .expect("connect to PostgreSQL");
        admin
            .execute(format!("CREATE SCHEMA {name}").as_str())
            .await
            .expect("create a test schema");
        admin.close().await;
        let separator = if base_url.contains('?') { '&' } else { '?' };
        let url = format!("{base_url}{separator}options=-c%20search_path%3D{name}");
        Some(Self {
            base_url,
            name,
            url,
        })
    }
}

impl Drop for TestSchema {
    fn drop(&mut self) {
        let base_url = self.base_url.clone();
        let statement = format!("DROP SCHEMA {} CASCADE", self.name);
        // Drop runs inside the test's runtime, which cannot block on a future, so the
        // schema is dropped from a runtime on a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("build a runtime to drop the schema");
            runtime.block_on(async {
                let admin = sqlx::AnyPool::connect(&base_url).await?;
                admin.execute(statement.as_str()).await?;
                admin.close().await;
                Ok::<(), sqlx::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("cannot drop test schema {}: {dropped:?}", self.name);
        }
    }
}

//! Adding and removing extensions through the HTTP API, by writing and deleting manifests
//! in the extensions directory.

use std::path::PathBuf;

use super::definition::Source;
use super::manifest;
use super::registry::Registry;
use crate::config::validate::validate_extension;
use crate::config::{ExtensionConfig, Problem};

/// Why an API change was rejected.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    /// The definition is invalid.
    #[error("invalid extension {name}: {}", list(.problems))]
    Invalid {
        /// Extension name.
        name: String,
        /// Every problem found.
        problems: Vec<Problem>,
    },
    /// An extension of that name exists.
    #[error(
        "extension {name} already exists (source: {origin:?}); remove it first or choose \
         another name"
    )]
    Exists {
        /// Extension name.
        name: String,
        /// Where the existing one is defined.
        origin: Source,
    },
    /// No extension of that name exists.
    #[error("extension {0} not found; GET /extensions/list shows the names")]
    NotFound(String),
    /// The extension is defined in the config file, which the API does not edit.
    #[error("extension {0} is defined in the config file; remove it from extensions.{0} there")]
    InConfig(String),
    /// Writing or deleting the manifest failed.
    #[error("cannot change the manifest of extension {name}: {error}")]
    Io {
        /// Extension name.
        name: String,
        /// The file system error.
        error: std::io::Error,
    },
}

fn list(problems: &[Problem]) -> String {
    let items: Vec<String> = problems.iter().map(ToString::to_string).collect();
    items.join("; ")
}

impl Registry {
    /// Validates `config`, writes it as a manifest and starts it. Returns the manifest path.
    pub async fn add(&self, name: &str, config: ExtensionConfig) -> Result<PathBuf, ChangeError> {
        let mut problems = Vec::new();
        validate_extension("", name, &config, &mut problems);
        for problem in &mut problems {
            problem.key = problem.key.trim_start_matches('.').to_owned();
        }
        if !problems.is_empty() {
            return Err(ChangeError::Invalid {
                name: name.to_owned(),
                problems,
            });
        }
        let _guard = self.changes.lock().await;
        if let Some(existing) = self.slot(name) {
            return Err(ChangeError::Exists {
                name: name.to_owned(),
                origin: existing.definition().source,
            });
        }
        let dir = self.config.current().config.extensions_dir.clone();
        let owned_name = name.to_owned();
        let path = tokio::task::spawn_blocking(move || manifest::write(&dir, &owned_name, &config))
            .await
            .map_err(std::io::Error::other)
            .and_then(|written| written)
            .map_err(|error| ChangeError::Io {
                name: name.to_owned(),
                error,
            })?;
        tracing::info!(extension = name, path = %path.display(), "extension manifest written through the API");
        self.reconcile().await;
        Ok(path)
    }

    /// Deletes the manifest of `name` and stops it. Returns when its server is gone.
    pub async fn remove(&self, name: &str) -> Result<(), ChangeError> {
        let _guard = self.changes.lock().await;
        let slot = self
            .slot(name)
            .ok_or_else(|| ChangeError::NotFound(name.to_owned()))?;
        let definition = slot.definition();
        let Some(path) = definition.file.clone() else {
            return Err(ChangeError::InConfig(name.to_owned()));
        };
        let io_error = |error| ChangeError::Io {
            name: name.to_owned(),
            error,
        };
        tokio::fs::remove_file(&path).await.map_err(io_error)?;
        tracing::info!(extension = name, path = %path.display(), "extension manifest deleted through the API");
        self.reconcile().await;
        Ok(())
    }
}

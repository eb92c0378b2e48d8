//! Configuration: defaults, file and environment merged into a typed, validated [`Config`],
//! held as an atomically swapped [`Snapshot`] that reloads when the file changes.

mod decode;
mod env;
pub mod keys;
mod lenient;
pub mod model;
mod secret;
mod snapshot;
mod source;
pub mod validate;
pub(crate) mod watch;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use env::PREFIX as ENV_PREFIX;
pub use env::SERVER_MARKERS;
pub use keys::{Caller, KeyTable};
pub use model::{
    Config, ExtensionConfig, ExtensionKind, KeyLimits, LogConfig, LogFormat, ProviderKind, Role,
    TlsConfig,
};
pub use secret::{DatabaseUrl, REDACTED, Secret};
pub use snapshot::{ConfigHandle, PendingRestart, ReloadOutcome, ReloadStatus, Snapshot};
pub use source::{CONFIG_PATH_VARIABLE, Format, detect_format, parse};
pub use watch::spawn_watcher;

/// One thing wrong with the configuration: the key, where it was set and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path such as `providers.openai.base_url`; empty for the whole document.
    pub key: String,
    /// Description of the problem and of the fix.
    pub message: String,
    /// The file or environment variable that set the key, once known.
    pub origin: Option<String>,
}

impl Problem {
    /// Creates a problem whose origin is filled in later.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
            origin: None,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(origin) = &self.origin {
            write!(f, "{origin}: ")?;
        }
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "key `{}`: {}", self.key, self.message)
        }
    }
}

/// The configuration could not be loaded; lists every problem found.
#[derive(Debug, Clone)]
pub struct LoadError {
    /// Every problem, in file order where known.
    pub problems: Vec<Problem>,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(f, "invalid configuration ({count} problem")?;
        if count != 1 {
            f.write_str("s")?;
        }
        f.write_str(")")?;
        for problem in &self.problems {
            write!(f, "\n  - {problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadError {}

/// Inputs of the configuration: the command line, the process environment and the working
/// directory. Tests build one directly instead of changing their own environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// Path given by `--config`.
    pub cli_path: Option<PathBuf>,
    /// Environment variables.
    pub env: HashMap<String, String>,
    /// Directory for the file lookup and relative paths.
    pub working_dir: PathBuf,
}

/// A loaded configuration and the file content it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// The config file, if one was found.
    pub file: Option<PathBuf>,
    /// The file's text, kept to detect unchanged content on reload.
    pub text: Option<String>,
}

/// Locates, reads, merges and validates the configuration.
pub fn load(sources: &Sources) -> Result<Loaded, LoadError> {
    let file = source::locate(
        sources.cli_path.as_deref(),
        &sources.env,
        &sources.working_dir,
    )
    .map_err(|problem| LoadError {
        problems: vec![problem],
    })?;
    let text = match &file {
        Some(path) => Some(std::fs::read_to_string(path).map_err(|error| LoadError {
            problems: vec![Problem {
                origin: Some(path.display().to_string()),
                ..Problem::new("", format!("cannot read the config file: {error}"))
            }],
        })?),
        None => None,
    };
    let config = build(file.as_deref(), text.as_deref(), &sources.env)?;
    Ok(Loaded { config, file, text })
}

/// Builds a validated config from file text (if any) and the environment.
pub fn build(
    file: Option<&Path>,
    text: Option<&str>,
    env: &HashMap<String, String>,
) -> Result<Config, LoadError> {
    let file_origin = file.map(|path| path.display().to_string());
    let mut unparsable = None;
    let mut tree = match (file, text) {
        (Some(path), Some(text)) => source::parse(text, source::detect_format(path, text))
            .unwrap_or_else(|message| {
                unparsable = Some(Problem {
                    origin: file_origin.clone(),
                    ..Problem::new("", format!("cannot parse the config file: {message}"))
                });
                serde_json::Value::Object(Default::default())
            }),
        _ => serde_json::Value::Object(Default::default()),
    };
    let (origins, env_problems) = env::apply(&mut tree, env);
    let file_parsed = unparsable.is_none();
    let mut problems: Vec<Problem> = unparsable.into_iter().collect();
    problems.extend(with_origins(
        env_problems,
        &Default::default(),
        Some("environment"),
    ));
    // Without the file's keys, decoding would report problems that the file may not have.
    if !file_parsed {
        return Err(LoadError { problems });
    }
    let (config, mut decoded) = decode::decode(tree);
    decoded.extend(validate::validate_decoded(&config, &decoded));
    problems.extend(with_origins(decoded, &origins, file_origin.as_deref()));
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(LoadError { problems })
    }
}

/// Fills in each problem's origin: the environment variable that set its key or a parent
/// of it, else the file.
fn with_origins(
    mut problems: Vec<Problem>,
    origins: &env::Origins,
    file: Option<&str>,
) -> Vec<Problem> {
    for problem in &mut problems {
        if problem.origin.is_some() {
            continue;
        }
        let from_env = origins.iter().find(|(key, _)| {
            problem.key == **key
                || problem.key.starts_with(&format!("{key}."))
                || problem.key.starts_with(&format!("{key}["))
        });
        problem.origin = match from_env {
            Some((_, variable)) => Some(format!("environment variable {variable}")),
            None => Some(file.unwrap_or("built-in defaults").to_owned()),
        };
        let wants_json = ["expected a sequence", "expected a map", "expected struct"]
            .iter()
            .any(|expected| problem.message.contains(expected));
        if from_env.is_some() && problem.message.contains("invalid type: string") && wants_json {
            problem
                .message
                .push_str("; a list or mapping in an environment variable must be valid JSON");
        }
    }
    problems
}

#[cfg(test)]
mod tests;

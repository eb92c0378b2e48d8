//! The desired set of extensions: `extensions.<name>` in the config plus the manifests in
//! the extensions directory, with every problem found on the way.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Serialize;
use utoipa::ToSchema;

use super::manifest::{self, Manifest};
use crate::config::{Config, ExtensionConfig};

/// Where an extension is defined.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// `extensions.<name>` in the config file.
    Config,
    /// A manifest an operator put into the extensions directory.
    Directory,
    /// A manifest written by `POST /extensions/add`.
    Api,
}

/// One extension the daemon should run.
#[derive(Debug, Clone, PartialEq)]
pub struct Definition {
    /// Extension name, the prefix of its tools' qualified names.
    pub name: String,
    /// Where it is defined.
    pub source: Source,
    /// Its settings.
    pub config: ExtensionConfig,
    /// The manifest file, for extensions from the directory.
    pub file: Option<PathBuf>,
}

impl Definition {
    /// Returns whether replacing `self` by `next` needs the server restarted. `timeout` and
    /// `available_tools` apply to the next call without a restart.
    pub fn needs_restart(&self, next: &Definition) -> bool {
        let live_fields_cleared = |config: &ExtensionConfig| ExtensionConfig {
            timeout: 0,
            available_tools: None,
            ..config.clone()
        };
        live_fields_cleared(&self.config) != live_fields_cleared(&next.config)
    }

    /// Returns whether `tool` may be offered to the agent under `available_tools`.
    pub fn allows(&self, tool: &str) -> bool {
        self.config
            .available_tools
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|name| name == tool))
    }
}

/// A manifest that was skipped, or a name defined twice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct DefinitionProblem {
    /// The manifest file concerned, if any.
    pub file: Option<String>,
    /// The extension name concerned, if known.
    pub name: Option<String>,
    /// What is wrong and how to fix it.
    pub message: String,
}

/// The extensions to run and the problems found while reading their definitions.
#[derive(Debug, Clone, Default)]
pub struct DesiredSet {
    /// Definitions by name.
    pub definitions: BTreeMap<String, Definition>,
    /// Broken manifests and duplicate names.
    pub problems: Vec<DefinitionProblem>,
}

/// Reads the extensions directory of `config` and merges it with the config's extensions.
/// Blocks on file I/O.
pub fn desired_set(config: &Config) -> DesiredSet {
    let scan = manifest::scan(&config.extensions_dir);
    merge(config, scan.manifests, scan.problems)
}

/// Merges config and directory definitions. A name defined in the config file keeps that
/// definition and its manifests are reported. A name with several manifests and no config
/// entry is not started, and each of its manifests is reported, because neither is
/// clearly the one the operator meant.
fn merge(
    config: &Config,
    manifests: Vec<Manifest>,
    mut problems: Vec<DefinitionProblem>,
) -> DesiredSet {
    let mut definitions: BTreeMap<String, Definition> = config
        .extensions
        .iter()
        .map(|(name, extension)| {
            let definition = Definition {
                name: name.clone(),
                source: Source::Config,
                config: extension.clone(),
                file: None,
            };
            (name.clone(), definition)
        })
        .collect();
    let mut by_name: BTreeMap<String, Vec<Manifest>> = BTreeMap::new();
    for manifest in manifests {
        by_name
            .entry(manifest.name.clone())
            .or_default()
            .push(manifest);
    }
    for (name, mut copies) in by_name {
        let in_config = definitions.contains_key(&name);
        if copies.len() == 1 && !in_config {
            let manifest = copies.remove(0);
            let source = if manifest.added_by_api {
                Source::Api
            } else {
                Source::Directory
            };
            let definition = Definition {
                name: name.clone(),
                source,
                config: manifest.config,
                file: Some(manifest.path),
            };
            definitions.insert(name, definition);
            continue;
        }
        let files: Vec<String> = copies
            .iter()
            .map(|copy| copy.path.display().to_string())
            .collect();
        for copy in &copies {
            let message = if in_config {
                format!(
                    "extension {name} is defined twice, in the config file and in this \
                     manifest; the config file's definition is used, so remove one of them"
                )
            } else {
                format!(
                    "extension {name} is defined twice, in {}; it is not started until only \
                     one manifest remains",
                    files.join(" and ")
                )
            };
            problems.push(DefinitionProblem {
                file: Some(copy.path.display().to_string()),
                name: Some(name.clone()),
                message,
            });
        }
    }
    DesiredSet {
        definitions,
        problems,
    }
}

//! Extension manifests: one file per extension in the extensions directory, named
//! `<name>.yaml`, `<name>.toml` or `<name>.json`, with the keys of `extensions.<name>`,
//! and plugin libraries named `<name>.so`, which define a `plugin` extension each.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::definition::DefinitionProblem;
use crate::config::validate::validate_extension;
use crate::config::{
    ExtensionConfig, ExtensionKind, Format, Problem, model::DEFAULT_EXTENSION_TIMEOUT_SECS,
};

/// First line of a manifest written by `POST /extensions/add`; it marks the source `api`.
pub const API_MARKER: &str = "# Added through POST /extensions/add.";

/// A manifest that parsed and validated.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file name without its extension.
    pub name: String,
    /// The file.
    pub path: PathBuf,
    /// Its settings.
    pub config: ExtensionConfig,
    /// Whether `POST /extensions/add` wrote it.
    pub added_by_api: bool,
}

/// Every valid manifest in a directory and a problem for each broken one.
#[derive(Debug, Default)]
pub struct Scan {
    /// Valid manifests, in file name order.
    pub manifests: Vec<Manifest>,
    /// Broken manifests and unreadable files.
    pub problems: Vec<DefinitionProblem>,
}

/// Returns the format and extension name of a manifest file name, or `None` for files that
/// are not manifests: hidden files, temporary files and other extensions such as `.example`.
pub fn manifest_name(file_name: &str) -> Option<(String, Format)> {
    if file_name.starts_with('.') {
        return None;
    }
    let (stem, extension) = file_name.rsplit_once('.')?;
    let format = match extension {
        "yaml" => Format::Yaml,
        "toml" => Format::Toml,
        "json" => Format::Json,
        _ => return None,
    };
    Some((stem.to_owned(), format))
}

/// Reads every manifest in `dir`. A missing directory holds no manifests.
pub fn scan(dir: &Path) -> Scan {
    let mut scan = Scan::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return scan,
        Err(error) => {
            scan.problems.push(DefinitionProblem {
                file: Some(dir.display().to_string()),
                name: None,
                message: format!("cannot read the extensions directory: {error}"),
            });
            return scan;
        }
    };
    let mut files: Vec<(String, FileKind, PathBuf)> = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Ok(file_name) = entry.file_name().into_string() else {
            continue;
        };
        let path = entry.path();
        if is_nameless_manifest(&file_name) {
            scan.problems.push(unusable_file(
                &path,
                "the file name has no extension name before its suffix; rename it to \
                 <name>.yaml, <name>.toml or <name>.json",
            ));
            continue;
        }
        let (name, kind) = match manifest_name(&file_name) {
            Some((name, format)) => (name, FileKind::Manifest(format)),
            None => match plugin_name(&file_name) {
                Some(name) => (name, FileKind::Library),
                None => continue,
            },
        };
        match std::fs::metadata(&path) {
            Ok(metadata) if metadata.is_file() => files.push((name, kind, path)),
            Ok(metadata) if metadata.is_dir() => scan.problems.push(unusable_file(
                &path,
                "this is a directory, not a manifest file; rename or remove it",
            )),
            Ok(_) => scan.problems.push(unusable_file(
                &path,
                "this is not a regular file; replace it with a manifest file",
            )),
            Err(error) => scan.problems.push(unusable_file(
                &path,
                &format!(
                    "cannot read the file: {error}; if it is a symbolic link, point it at an \
                     existing manifest file or remove it"
                ),
            )),
        }
    }
    files.sort_by(|a, b| a.2.cmp(&b.2));
    for (name, kind, path) in files {
        let read = match kind {
            FileKind::Manifest(format) => read(&name, format, &path),
            FileKind::Library => library(&name, &path),
        };
        match read {
            Ok(manifest) => scan.manifests.push(manifest),
            Err(problems) => {
                let details: Vec<String> = problems.iter().map(ToString::to_string).collect();
                tracing::error!(
                    path = %path.display(),
                    error = %details.join("; "),
                    "skipping a broken extension manifest"
                );
                scan.problems.push(DefinitionProblem {
                    file: Some(path.display().to_string()),
                    name: Some(name),
                    message: format!(
                        "broken manifest, skipped: {}; fix the file and save it again",
                        details.join("; ")
                    ),
                });
            }
        }
    }
    scan
}

/// Returns whether `file_name` has a manifest suffix and nothing else but dots, such as
/// `..yaml`, which the hidden-file rule would otherwise skip unreported.
fn is_nameless_manifest(file_name: &str) -> bool {
    let rest = file_name.trim_start_matches('.');
    rest.len() < file_name.len() && matches!(rest, "yaml" | "toml" | "json")
}

/// Logs and describes a file in the extensions directory that cannot be a manifest.
fn unusable_file(path: &Path, reason: &str) -> DefinitionProblem {
    tracing::error!(path = %path.display(), error = reason, "skipping an unusable extension file");
    DefinitionProblem {
        file: Some(path.display().to_string()),
        name: None,
        message: format!("skipped: {reason}"),
    }
}

/// What a file in the extensions directory defines.
#[derive(Debug, Clone, Copy)]
enum FileKind {
    Manifest(Format),
    Library,
}

/// Returns the extension name of a plugin library file name: `calc.so` is `calc`. Hidden
/// files, such as a copy in progress before its rename, are not plugins.
pub fn plugin_name(file_name: &str) -> Option<String> {
    if file_name.starts_with('.') {
        return None;
    }
    file_name
        .strip_suffix(".so")
        .filter(|stem| !stem.is_empty())
        .map(str::to_owned)
}

/// Defines a `plugin` extension with default settings for a library dropped into the
/// directory.
fn library(name: &str, path: &Path) -> Result<Manifest, Vec<Problem>> {
    let config = ExtensionConfig {
        kind: ExtensionKind::Plugin,
        enabled: true,
        available_tools: None,
        timeout: DEFAULT_EXTENSION_TIMEOUT_SECS,
        cmd: None,
        args: Vec::new(),
        envs: Default::default(),
        env_keys: Vec::new(),
        cwd: None,
        uri: None,
        headers: Default::default(),
        name: None,
        path: Some(path.to_path_buf()),
    };
    let mut problems = Vec::new();
    validate_extension("", name, &config, &mut problems);
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Manifest {
        name: name.to_owned(),
        path: path.to_path_buf(),
        config,
        added_by_api: false,
    })
}

fn read(name: &str, format: Format, path: &Path) -> Result<Manifest, Vec<Problem>> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| vec![Problem::new("", format!("cannot read the file: {error}"))])?;
    let config = parse(name, &text, format)?;
    Ok(Manifest {
        name: name.to_owned(),
        path: path.to_path_buf(),
        config,
        added_by_api: text.starts_with(API_MARKER),
    })
}

/// Parses and validates one manifest's text for the extension `name`, reporting unknown
/// keys as the config file does.
pub fn parse(name: &str, text: &str, format: Format) -> Result<ExtensionConfig, Vec<Problem>> {
    let tree = crate::config::parse(text, format)
        .map_err(|message| vec![Problem::new("", format!("cannot parse: {message}"))])?;
    let config = decode(tree)?;
    let mut problems = Vec::new();
    validate_extension("", name, &config, &mut problems);
    for problem in &mut problems {
        problem.key = problem.key.trim_start_matches('.').to_owned();
    }
    if problems.is_empty() {
        Ok(config)
    } else {
        Err(problems)
    }
}

/// Decodes a JSON tree into an extension definition; unknown keys are problems.
pub fn decode(tree: Value) -> Result<ExtensionConfig, Vec<Problem>> {
    let mut unknown = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| unknown.push(path.to_string());
    let tracked = serde_ignored::Deserializer::new(tree, &mut record_unknown);
    let decoded: Result<ExtensionConfig, _> = serde_path_to_error::deserialize(tracked);
    let mut problems: Vec<Problem> = unknown
        .into_iter()
        .map(|key| Problem::new(key, "unknown key; check its spelling"))
        .collect();
    match decoded {
        Ok(config) if problems.is_empty() => Ok(config),
        Ok(_) => Err(problems),
        Err(error) => {
            let key = error.path().to_string();
            let key = if key == "." { String::new() } else { key };
            let message = decode_message(&key, &error.into_inner());
            problems.push(Problem::new(key, message));
            Err(problems)
        }
    }
}

/// Top-level keys whose values may contain credentials: header values, variables for the
/// server, tokens in a URL's query or in program arguments.
const CREDENTIAL_KEYS: &[&str] = &["envs", "headers", "uri", "args"];

/// Describes a decode error at `key`. serde's "invalid type" message quotes the value it
/// found, so for a credential-bearing key, or the whole document, only the expected type
/// is kept.
fn decode_message(key: &str, error: &serde_json::Error) -> String {
    let message = error.to_string();
    let top_level_key = key.split(['.', '[']).next().unwrap_or_default();
    if !key.is_empty() && !CREDENTIAL_KEYS.contains(&top_level_key) {
        return message;
    }
    // serde formats the message as "invalid type: <found>, expected <type>", and only
    // <found> comes from the input.
    match message.rsplit_once(", expected ") {
        Some((_, expected)) => format!(
            "invalid value (not shown, because it may contain a credential); expected \
             {expected}"
        ),
        None => "invalid value (not shown, because it may contain a credential)".to_owned(),
    }
}

/// Writes `config` as `<dir>/<name>.yaml`, marked as added through the API, and returns
/// the path. The file is readable by its owner only, because `envs` and `headers` may hold
/// credentials, and it appears by rename so the directory watcher never reads half of it.
pub fn write(dir: &Path, name: &str, config: &ExtensionConfig) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let yaml = serde_yaml::to_string(&with_secrets(config)?).map_err(std::io::Error::other)?;
    let path = dir.join(format!("{name}.yaml"));
    let temp = dir.join(format!(".{name}.yaml.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    writeln!(file, "{API_MARKER}")?;
    file.write_all(yaml.as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&temp, &path)?;
    Ok(path)
}

/// Serializes `config` with the real values of `envs` and `headers`, which the config
/// types redact.
fn with_secrets(config: &ExtensionConfig) -> std::io::Result<Value> {
    let mut value = serde_json::to_value(config).map_err(std::io::Error::other)?;
    let Value::Object(map) = &mut value else {
        return Err(std::io::Error::other(
            "an extension did not serialize as a mapping",
        ));
    };
    let exposed = |secrets: &std::collections::BTreeMap<String, crate::config::Secret>| {
        secrets
            .iter()
            .map(|(name, secret)| (name.clone(), Value::String(secret.expose().to_owned())))
            .collect::<serde_json::Map<String, Value>>()
    };
    if !config.envs.is_empty() {
        map.insert("envs".to_owned(), Value::Object(exposed(&config.envs)));
    }
    if !config.headers.is_empty() {
        map.insert(
            "headers".to_owned(),
            Value::Object(exposed(&config.headers)),
        );
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_skip_other_files() {
        assert_eq!(
            manifest_name("files.yaml"),
            Some(("files".to_owned(), Format::Yaml))
        );
        assert_eq!(
            manifest_name("a.b.json"),
            Some(("a.b".to_owned(), Format::Json))
        );
        for skipped in [
            "README.md",
            "x.yaml.example",
            ".x.yaml.tmp",
            "noext",
            "x.yml",
        ] {
            assert_eq!(manifest_name(skipped), None, "{skipped}");
        }
    }

    #[test]
    fn parse_reports_unknown_keys_and_invalid_values() {
        let problems = parse("s", "type: stdio\ncmd: x\ncommand: y\n", Format::Yaml)
            .err()
            .unwrap_or_default();
        assert!(problems.iter().any(|p| p.key == "command"), "{problems:?}");
        let problems = parse("s", "type: stdio\n", Format::Yaml)
            .err()
            .unwrap_or_default();
        assert!(problems.iter().any(|p| p.key == "cmd"), "{problems:?}");
        let problems = parse(
            "s",
            "type: stdio\ncmd: x\nenvs:\n  LD_PRELOAD: /x.so\n",
            Format::Yaml,
        )
        .err()
        .unwrap_or_default();
        assert!(
            problems.iter().any(|p| p.message.contains("LD_PRELOAD")),
            "{problems:?}"
        );
    }

    #[test]
    fn unusable_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("loop1.yaml", dir.path().join("loop1.yaml")).unwrap();
        std::fs::create_dir(dir.path().join("adir.yaml")).unwrap();
        std::fs::write(dir.path().join("..yaml"), "type: stdio\ncmd: x\n").unwrap();
        std::fs::write(dir.path().join(".x.yaml.tmp"), "partial").unwrap();
        let scan = scan(dir.path());
        assert_eq!(scan.manifests.len(), 0);
        let problem_for = |file: &str| {
            let path = dir.path().join(file).display().to_string();
            scan.problems
                .iter()
                .find(|problem| problem.file.as_deref() == Some(path.as_str()))
                .map(|problem| problem.message.clone())
        };
        let looped = problem_for("loop1.yaml").unwrap_or_default();
        assert!(looped.contains("symbolic link"), "{looped}");
        let directory = problem_for("adir.yaml").unwrap_or_default();
        assert!(directory.contains("directory"), "{directory}");
        let nameless = problem_for("..yaml").unwrap_or_default();
        assert!(nameless.contains("rename it"), "{nameless}");
        assert_eq!(scan.problems.len(), 3, "{:?}", scan.problems);
    }

    #[test]
    fn decode_errors_hide_credential_values() {
        let cases = [
            (
                "type: sse\nuri: http://x\nheaders: \"Authorization: Bearer SECRET-1\"\n",
                "headers",
                "a map",
            ),
            (
                "type: stdio\ncmd: x\nenvs: \"TOKEN=SECRET-2\"\n",
                "envs",
                "a map",
            ),
            (
                "type: stdio\ncmd: x\nenvs:\n  TOKEN: [SECRET-3]\n",
                "envs.TOKEN",
                "a string",
            ),
            ("type: sse\nuri: [SECRET-4]\n", "uri", "a string"),
            (
                "type: stdio\ncmd: x\nargs: \"--token SECRET-5\"\n",
                "args",
                "a sequence",
            ),
        ];
        for (text, key, expected) in cases {
            let problems = parse("s", text, Format::Yaml).err().unwrap_or_default();
            assert_eq!(problems.len(), 1, "{text}: {problems:?}");
            assert_eq!(problems[0].key, key, "{text}");
            let message = &problems[0].message;
            assert!(!message.contains("SECRET"), "{text}: {message}");
            assert!(message.contains(expected), "{text}: {message}");
        }
    }

    #[test]
    fn decode_errors_show_other_values() {
        let problems = parse("s", "type: stdio\ncmd: [1]\n", Format::Yaml)
            .err()
            .unwrap_or_default();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("sequence"), "{problems:?}");
    }

    #[test]
    fn written_manifest_keeps_secrets_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let config = parse(
            "echo",
            r#"{"type": "stdio", "cmd": "echo", "envs": {"TOKEN": "s3cret"}, "timeout": 5}"#,
            Format::Json,
        )
        .unwrap();
        let path = write(dir.path(), "echo", &config).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with(API_MARKER));
        assert!(text.contains("s3cret"));
        let scan = scan(dir.path());
        assert_eq!(scan.problems, Vec::new());
        assert_eq!(scan.manifests.len(), 1);
        assert!(scan.manifests[0].added_by_api);
        assert_eq!(scan.manifests[0].config, config);
    }
}

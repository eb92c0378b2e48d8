//! Finding the config file and parsing YAML, TOML or JSON into one JSON tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Problem;

/// Environment variable naming the config file when `--config` is absent.
pub const CONFIG_PATH_VARIABLE: &str = "GOOSE_API_CONFIG";

/// File names tried in the working directory, in order, when no path is given.
const LOOKUP_NAMES: [&str; 4] = ["config", "config.yaml", "config.toml", "config.json"];

/// Syntax of a config file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// YAML, also used for `.yml`.
    Yaml,
    /// TOML.
    Toml,
    /// JSON.
    Json,
}

/// Returns the config file to use, or `None` when defaults and environment alone apply.
///
/// A path given by `--config` or `GOOSE_API_CONFIG` must exist; the lookup in
/// `working_dir` takes the first of `config`, `config.yaml`, `config.toml`, `config.json`.
pub fn locate(
    cli_path: Option<&Path>,
    env: &HashMap<String, String>,
    working_dir: &Path,
) -> Result<Option<PathBuf>, Problem> {
    let explicit = cli_path
        .map(|path| (path.to_path_buf(), "--config"))
        .or_else(|| {
            env.get(CONFIG_PATH_VARIABLE)
                .filter(|value| !value.is_empty())
                .map(|value| (PathBuf::from(value), CONFIG_PATH_VARIABLE))
        });
    if let Some((path, origin)) = explicit {
        let path = working_dir.join(path);
        if !path.is_file() {
            return Err(Problem::new(
                origin,
                format!(
                    "config file {} does not exist or is not a file; fix the path or unset {origin}",
                    path.display()
                ),
            ));
        }
        return Ok(Some(path));
    }
    Ok(LOOKUP_NAMES
        .iter()
        .map(|name| working_dir.join(name))
        .find(|path| path.is_file()))
}

/// Picks the syntax from the file extension, or from the content for a file without one.
pub fn detect_format(path: &Path, text: &str) -> Format {
    match path.extension().and_then(|ext| ext.to_str()) {
        Some("yaml" | "yml") => Format::Yaml,
        Some("toml") => Format::Toml,
        Some("json") => Format::Json,
        _ => detect_format_from_content(text),
    }
}

/// JSON starts with `{`; TOML has `key = value` or `[table]` lines; anything else is YAML.
fn detect_format_from_content(text: &str) -> Format {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    let Some(first) = lines.next() else {
        return Format::Yaml;
    };
    if first.starts_with('{') {
        return Format::Json;
    }
    let looks_like_toml = |line: &str| {
        (line.starts_with('[') && line.ends_with(']'))
            || line
                .split_once('=')
                .is_some_and(|(key, _)| is_toml_key(key.trim()))
    };
    if looks_like_toml(first) {
        Format::Toml
    } else {
        Format::Yaml
    }
}

fn is_toml_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '"'))
}

/// Parses `text` in `format` into a JSON tree whose top level is an object.
///
/// An empty document is an empty object, so a blank file means "defaults".
pub fn parse(text: &str, format: Format) -> Result<Value, String> {
    let value = match format {
        Format::Json => serde_json::from_str::<Value>(text).map_err(|e| e.to_string())?,
        Format::Toml => {
            let table: toml::Table = toml::from_str(text).map_err(|e| e.to_string())?;
            serde_json::to_value(table).map_err(|e| e.to_string())?
        }
        Format::Yaml => {
            check_flow_depth(text)?;
            let yaml: serde_yaml::Value = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
            serde_json::to_value(yaml).map_err(|e| format!("unsupported YAML value: {e}"))?
        }
    };
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Default::default())),
        other => Err(format!(
            "the top level must be a mapping of keys, found {}",
            kind_of(&other)
        )),
    }
}

/// Maximum nesting depth of YAML flow collections (`[...]`, `{...}`). The YAML parser
/// takes time quadratic in this depth before its own limit rejects a document, about 2.6 s
/// at 40,000 levels with serde_yaml 0.9 on a 2-core machine, and blocks reloads meanwhile.
const MAX_FLOW_DEPTH: usize = 64;

/// Rejects YAML whose flow collections nest deeper than [`MAX_FLOW_DEPTH`]. Brackets inside
/// quoted scalars and comments do not count. The scan is approximate: brackets inside
/// unquoted scalars count, and an apostrophe in one hides the brackets up to the next.
fn check_flow_depth(text: &str) -> Result<(), String> {
    let mut depth = 0_usize;
    let mut quote: Option<char> = None;
    let mut previous = '\n';
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match quote {
            Some('"') if c == '\\' => {
                chars.next();
            }
            Some(open) if c == open => quote = None,
            Some(_) => {}
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' if previous.is_whitespace() => {
                    // A comment runs to the end of its line.
                    for skipped in chars.by_ref() {
                        if skipped == '\n' {
                            break;
                        }
                    }
                }
                '[' | '{' => {
                    depth += 1;
                    if depth > MAX_FLOW_DEPTH {
                        return Err(format!(
                            "YAML lists or mappings in [] or {{}} are nested more than \
                             {MAX_FLOW_DEPTH} levels deep; flatten the document"
                        ));
                    }
                }
                ']' | '}' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
        previous = c;
    }
    Ok(())
}

/// Names a JSON value's type for error messages.
pub fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_yaml_flow_nesting_is_rejected() {
        let nested = |depth: usize| format!("args: {}x{}\n", "[".repeat(depth), "]".repeat(depth));
        assert!(parse(&nested(MAX_FLOW_DEPTH), Format::Yaml).is_ok());
        let error = parse(&nested(40_000), Format::Yaml).expect_err("too deep");
        assert!(error.contains("nested more than 64 levels"), "{error}");
        // Brackets in quoted scalars and comments are not nesting.
        let brackets = "[".repeat(100);
        let quoted = format!("a: \"{brackets}\"\nb: '{brackets}'\nc: 1 # {brackets}\n");
        assert!(parse(&quoted, Format::Yaml).is_ok());
    }

    #[test]
    fn content_detection_covers_three_formats() {
        let no_ext = Path::new("config");
        assert_eq!(detect_format(no_ext, "{\"port\": 1}"), Format::Json);
        assert_eq!(detect_format(no_ext, "# c\nport = 1\n"), Format::Toml);
        assert_eq!(
            detect_format(no_ext, "[limits]\nmax_body_bytes = 1"),
            Format::Toml
        );
        assert_eq!(detect_format(no_ext, "port: 1\n"), Format::Yaml);
        assert_eq!(detect_format(no_ext, "- a\n"), Format::Yaml);
        assert_eq!(detect_format(no_ext, ""), Format::Yaml);
    }

    #[test]
    fn parse_rejects_non_mapping_top_level() {
        let error = parse("- 1\n- 2\n", Format::Yaml).err().unwrap_or_default();
        assert!(error.contains("found a list"), "error was {error}");
    }

    #[test]
    fn parse_treats_empty_document_as_empty_mapping() {
        assert_eq!(parse("", Format::Yaml).ok(), Some(serde_json::json!({})));
    }
}

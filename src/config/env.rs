//! Environment variables layered over the config file.
//!
//! `GOOSE_API_<KEY>` sets a top-level key and `__` separates nesting levels, so
//! `GOOSE_API_PROVIDERS__OPENAI__BASE_URL` sets `providers.openai.base_url`. Values are
//! strings; a value that starts with `[` or `{` and parses as JSON sets a list or a mapping.

use std::collections::{BTreeMap, HashMap};

use serde_json::{Map, Value};

use super::Problem;
use super::source::CONFIG_PATH_VARIABLE;

/// Prefix of every variable that sets a config key.
pub const PREFIX: &str = "GOOSE_API_";
/// Variables with this prefix belong to the test suite and never set config keys.
const TEST_PREFIX: &str = "GOOSE_API_TEST_";
/// Variables that a daemon sets on its stdio extension servers to mark their owner. A daemon
/// that runs as such a server, or under one, must not read them as config keys.
pub const SERVER_MARKERS: [&str; 3] =
    ["GOOSE_API_OWNER", "GOOSE_API_EXTENSION", "GOOSE_API_SERVER"];
/// The original goose-api README sets `api_key` through this name.
const API_KEY_ALIAS: &str = "GOOSE_API_KEY";

/// The usual credential variables of each provider kind. They fill `providers.<name>.api_key`
/// only when neither the file nor a `GOOSE_API_` variable sets it.
const PROVIDER_CREDENTIALS: [(&str, &str); 5] = [
    ("openai", "OPENAI_API_KEY"),
    ("anthropic", "ANTHROPIC_API_KEY"),
    ("google", "GOOGLE_API_KEY"),
    ("google", "GEMINI_API_KEY"),
    ("openrouter", "OPENROUTER_API_KEY"),
];

/// Where each overridden key came from, so errors can name the variable.
pub type Origins = BTreeMap<String, String>;

/// Applies every valid `GOOSE_API_` variable in `env` to `tree`. Returns which key came
/// from which variable, and a problem for each variable that could not be applied.
pub fn apply(tree: &mut Value, env: &HashMap<String, String>) -> (Origins, Vec<Problem>) {
    let mut origins = Origins::new();
    let mut problems = Vec::new();
    if env.contains_key(API_KEY_ALIAS) && env.contains_key("GOOSE_API_API_KEY") {
        problems.push(Problem::new(
            "api_key",
            "both GOOSE_API_KEY and GOOSE_API_API_KEY are set; unset one of them",
        ));
    }
    let mut names: Vec<&String> = env.keys().filter(|name| is_config_variable(name)).collect();
    names.sort();
    for name in names {
        let path = key_path(name);
        if let Some(segment) = path.iter().find(|segment| segment.is_empty()) {
            problems.push(Problem::new(
                name.as_str(),
                format!("invalid variable name: empty key segment {segment:?} between `__`"),
            ));
            continue;
        }
        let value = parse_value(&env[name]);
        if let Err(message) = set_path(tree, &path, value) {
            problems.push(Problem::new(
                path.join("."),
                format!("{message} (from {name})"),
            ));
            continue;
        }
        origins.insert(path.join("."), name.clone());
    }
    apply_provider_credentials(tree, env, &mut origins);
    (origins, problems)
}

fn is_config_variable(name: &str) -> bool {
    name.starts_with(PREFIX)
        && !name.starts_with(TEST_PREFIX)
        && name != CONFIG_PATH_VARIABLE
        && !SERVER_MARKERS.contains(&name)
}

/// Maps a variable name to its key path, lower-cased.
fn key_path(name: &str) -> Vec<String> {
    if name == API_KEY_ALIAS {
        return vec!["api_key".to_owned()];
    }
    name[PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect()
}

fn parse_value(raw: &str) -> Value {
    let trimmed = raw.trim_start();
    if (trimmed.starts_with('[') || trimmed.starts_with('{'))
        && let Ok(value) = serde_json::from_str::<Value>(raw)
    {
        return value;
    }
    Value::String(raw.to_owned())
}

/// Sets `path` in `tree`, creating mappings along the way.
fn set_path(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut node = tree;
    for (depth, segment) in path.iter().enumerate() {
        let Value::Object(map) = node else {
            return Err(format!(
                "cannot set a nested key because `{}` is not a mapping",
                path[..depth].join(".")
            ));
        };
        if depth + 1 == path.len() {
            map.insert(segment.clone(), value);
            return Ok(());
        }
        node = map
            .entry(segment.clone())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    Ok(())
}

fn apply_provider_credentials(
    tree: &mut Value,
    env: &HashMap<String, String>,
    origins: &mut Origins,
) {
    for (provider, variable) in PROVIDER_CREDENTIALS {
        let Some(credential) = env.get(variable).filter(|value| !value.is_empty()) else {
            continue;
        };
        let path = [
            "providers".to_owned(),
            provider.to_owned(),
            "api_key".to_owned(),
        ];
        let already_set = tree
            .pointer(&format!("/providers/{provider}/api_key"))
            .is_some();
        if already_set {
            continue;
        }
        if set_path(tree, &path, Value::String(credential.clone())).is_ok() {
            origins.insert(path.join("."), variable.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn nested_variable_sets_nested_key() {
        let mut tree = json!({"providers": {"openai": {"model": "x"}}});
        let vars = env(&[(
            "GOOSE_API_PROVIDERS__OPENAI__BASE_URL",
            "http://127.0.0.1:1/v1",
        )]);
        let origins = apply(&mut tree, &vars).0;
        assert_eq!(
            tree["providers"]["openai"]["base_url"],
            "http://127.0.0.1:1/v1"
        );
        assert_eq!(tree["providers"]["openai"]["model"], "x");
        assert_eq!(
            origins.get("providers.openai.base_url").map(String::as_str),
            Some("GOOSE_API_PROVIDERS__OPENAI__BASE_URL")
        );
    }

    #[test]
    fn original_key_variable_sets_api_key() {
        let mut tree = json!({});
        apply(&mut tree, &env(&[("GOOSE_API_KEY", "k")]));
        assert_eq!(tree["api_key"], "k");
    }

    #[test]
    fn json_value_sets_a_list() {
        let mut tree = json!({});
        let vars = env(&[(
            "GOOSE_API_CORS__ALLOWED_ORIGINS",
            r#"["https://a.example"]"#,
        )]);
        apply(&mut tree, &vars);
        assert_eq!(
            tree["cors"]["allowed_origins"],
            json!(["https://a.example"])
        );
    }

    #[test]
    fn config_path_test_and_marker_variables_are_not_keys() {
        let mut tree = json!({});
        let vars = env(&[
            ("GOOSE_API_CONFIG", "/x.yaml"),
            ("GOOSE_API_TEST_POSTGRES_URL", "postgres://"),
            ("GOOSE_API_OWNER", "1:2:3:4"),
            ("GOOSE_API_EXTENSION", "everything"),
        ]);
        apply(&mut tree, &vars);
        assert_eq!(tree, json!({}));
    }

    #[test]
    fn usual_credential_fills_only_missing_key() {
        let mut tree = json!({"providers": {"anthropic": {"api_key": "from-file"}}});
        let vars = env(&[("OPENAI_API_KEY", "o"), ("ANTHROPIC_API_KEY", "a")]);
        apply(&mut tree, &vars);
        assert_eq!(tree["providers"]["openai"]["api_key"], "o");
        assert_eq!(tree["providers"]["anthropic"]["api_key"], "from-file");
    }

    #[test]
    fn nesting_under_a_scalar_is_reported() {
        let mut tree = json!({"limits": 5});
        let vars = env(&[("GOOSE_API_LIMITS__MAX_BODY_BYTES", "10")]);
        let problems = apply(&mut tree, &vars).1;
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0]
                .message
                .contains("GOOSE_API_LIMITS__MAX_BODY_BYTES")
        );
    }
}

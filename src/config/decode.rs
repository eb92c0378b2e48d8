//! Turning the merged JSON tree into a typed [`Config`], reporting every problem at once.
//!
//! Serde stops at the first error of a struct, so each top-level key is decoded on its own,
//! and unknown nested keys are collected by `serde_ignored` instead of failing the decode.

use serde::de::DeserializeOwned;
use serde_json::Value;

use serde_with::de::DeserializeAsWrap;

use super::Problem;
use super::lenient::Lenient;
use super::model::Config;
use super::source::kind_of;

/// Decodes `tree` over the built-in defaults.
///
/// Returns the config and the problems found. A key with a problem keeps its default, so
/// the rest of the config can still be validated.
pub fn decode(tree: Value) -> (Config, Vec<Problem>) {
    let Value::Object(map) = tree else {
        let problems = vec![Problem::new(
            "",
            format!(
                "the top level must be a mapping of keys, found {}",
                kind_of(&tree)
            ),
        )];
        return (Config::default(), problems);
    };
    let mut config = Config::default();
    let mut problems = Vec::new();
    for (key, value) in map {
        let decoded = match key.as_str() {
            "host" => decode_into(&key, value, &mut config.host),
            "port" => decode_lenient_into(&key, value, &mut config.port),
            "api_key" => decode_into(&key, value, &mut config.api_key),
            "api_keys" => decode_into(&key, value, &mut config.api_keys),
            "provider" => decode_into(&key, value, &mut config.provider),
            "model" => decode_into(&key, value, &mut config.model),
            "agent" => decode_into(&key, value, &mut config.agent),
            "providers" => decode_into(&key, value, &mut config.providers),
            "extensions_dir" => decode_into(&key, value, &mut config.extensions_dir),
            "extensions" => decode_into(&key, value, &mut config.extensions),
            "extensions_allow_api_changes" => {
                decode_lenient_into(&key, value, &mut config.extensions_allow_api_changes)
            }
            "store" => decode_into(&key, value, &mut config.store),
            "sessions" => decode_into(&key, value, &mut config.sessions),
            "limits" => decode_into(&key, value, &mut config.limits),
            "tls" => decode_into(&key, value, &mut config.tls),
            "log" => decode_into(&key, value, &mut config.log),
            "cors" => decode_into(&key, value, &mut config.cors),
            "shutdown" => decode_into(&key, value, &mut config.shutdown),
            _ => vec![Problem::new(
                key.as_str(),
                "unknown key; check its spelling",
            )],
        };
        problems.extend(decoded);
    }
    (config, problems)
}

/// Decodes one top-level value into `slot`, which keeps its default on error.
fn decode_into<T: DeserializeOwned>(key: &str, value: Value, slot: &mut T) -> Vec<Problem> {
    let mut unknown = Vec::new();
    let mut record_unknown = |path: serde_ignored::Path<'_>| {
        unknown.push(join_path(key, &path.to_string()));
    };
    let tracked = serde_ignored::Deserializer::new(value, &mut record_unknown);
    let mut problems = Vec::new();
    match serde_path_to_error::deserialize::<_, T>(tracked) {
        Ok(decoded) => *slot = decoded,
        Err(error) => {
            let path = join_path(key, &error.path().to_string());
            let mut message = error.into_inner().to_string();
            if may_hold_secret(&path) {
                message = without_value(&message);
            }
            problems.push(Problem::new(path, message));
        }
    }
    for path in unknown {
        problems.push(Problem::new(path, "unknown key; check its spelling"));
    }
    problems
}

/// Key names whose values may be or contain credentials: keys, headers, child environments
/// and URLs, which can carry a password or a token.
const SECRET_SEGMENTS: [&str; 8] = [
    "api_key",
    "api_keys",
    "key",
    "key_sha256",
    "headers",
    "envs",
    "url",
    "base_url",
];

fn may_hold_secret(path: &str) -> bool {
    path.split(['.', '[', ']'])
        .any(|segment| SECRET_SEGMENTS.contains(&segment))
}

/// Removes the value from serde's "invalid type: string \"...\", expected ..." and
/// "invalid value: ..." messages, keeping its kind.
fn without_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        let Some(rest) = message.strip_prefix(prefix) else {
            continue;
        };
        let Some((unexpected, expected)) = rest.rsplit_once(", expected ") else {
            continue;
        };
        let kind = unexpected
            .split_once(['"', '`'])
            .map_or(unexpected, |(kind, _)| kind)
            .trim();
        return format!("{prefix}{kind}, expected {expected}");
    }
    message.to_owned()
}

/// Like [`decode_into`] for numbers and booleans that may arrive as strings.
fn decode_lenient_into<T>(key: &str, value: Value, slot: &mut T) -> Vec<Problem>
where
    T: DeserializeOwned + std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let mut decoded: Option<DeserializeAsWrap<T, Lenient>> = None;
    let problems = decode_into(key, value, &mut decoded);
    if let Some(wrapped) = decoded {
        *slot = wrapped.into_inner();
    }
    problems
}

/// Joins a top-level key and a path below it; `.` and `?` mean "the value itself".
fn join_path(key: &str, below: &str) -> String {
    if below.is_empty() || below == "." || below == "?" {
        key.to_owned()
    } else if below.starts_with('[') {
        format!("{key}{below}")
    } else {
        format!("{key}.{below}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems_of(tree: Value) -> Vec<String> {
        decode(tree)
            .1
            .into_iter()
            .map(|problem| problem.key)
            .collect()
    }

    #[test]
    fn every_problem_is_reported() {
        let keys = problems_of(json!({
            "prot": 1,
            "port": "eighty",
            "limits": {"max_body_bytez": 5},
            "providers": {"openai": {"base_ulr": "x"}},
            "api_keys": [{"name": "a", "key": "k", "role": "root"}],
        }));
        assert!(keys.contains(&"prot".to_owned()), "{keys:?}");
        assert!(keys.contains(&"port".to_owned()), "{keys:?}");
        assert!(
            keys.contains(&"limits.max_body_bytez".to_owned()),
            "{keys:?}"
        );
        assert!(
            keys.contains(&"providers.openai.base_ulr".to_owned()),
            "{keys:?}"
        );
        assert!(keys.contains(&"api_keys[0].role".to_owned()), "{keys:?}");
        assert_eq!(keys.len(), 5, "{keys:?}");
    }

    #[test]
    fn secret_values_stay_out_of_messages() {
        let (_, problems) = decode(json!({
            "api_key": 12345678901234567890_u64,
            "api_keys": "[{\"name\": \"a\", \"key\": \"SECRET-0123456789abcdef\"",
            "extensions": {"x": {"type": "sse", "uri": "http://h", "headers": "Bearer SECRET-2"}},
            "port": "eighty",
        }));
        let messages: Vec<String> = problems.iter().map(ToString::to_string).collect();
        let text = messages.join("\n");
        assert_eq!(problems.len(), 4, "{text}");
        assert!(!text.contains("SECRET"), "{text}");
        assert!(!text.contains("12345678901234567890"), "{text}");
        assert!(text.contains("invalid type: integer, expected"), "{text}");
        assert!(
            text.contains("invalid type: string, expected a sequence"),
            "{text}"
        );
        // A value that cannot be a secret is still shown.
        assert!(text.contains("eighty"), "{text}");
    }

    #[test]
    fn strings_decode_as_numbers_and_booleans() {
        let (config, problems) = decode(json!({
            "port": "9000",
            "limits": {"max_body_bytes": "1024"},
            "extensions_allow_api_changes": "true",
        }));
        assert_eq!(problems, Vec::new());
        assert_eq!(config.port, 9000);
        assert_eq!(config.limits.max_body_bytes, 1024);
        assert!(config.extensions_allow_api_changes);
    }

    #[test]
    fn nested_defaults_survive_partial_sections() {
        let (config, problems) = decode(json!({"limits": {"max_body_bytes": 10}}));
        assert_eq!(problems, Vec::new());
        assert_eq!(config.limits.max_body_bytes, 10);
        assert_eq!(
            config.limits.request_timeout_secs,
            Config::default().limits.request_timeout_secs
        );
    }
}

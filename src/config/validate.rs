//! Checks across keys that types alone cannot express.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use axum::http::{HeaderName, HeaderValue};
use tracing_subscriber::EnvFilter;

use super::Problem;
use super::model::{Config, ExtensionConfig, ExtensionKind, ProviderKind};
use super::secret::Secret;

/// Shortest key accepted, so a key cannot be guessed by brute force over HTTP.
pub const MIN_KEY_LENGTH: usize = 16;

/// Returns the semantic problems of a config whose decoding found `decode_problems`.
///
/// Keys that failed to decode hold their defaults, so problems under them are left out, and
/// the key requirement is not checked when a key setting failed to decode.
pub fn validate_decoded(config: &Config, decode_problems: &[Problem]) -> Vec<Problem> {
    let failed: BTreeSet<&str> = decode_problems
        .iter()
        .map(|problem| top_level_key(&problem.key))
        .collect();
    let keys_failed = failed.contains("api_key") || failed.contains("api_keys");
    let mut problems = Vec::new();
    validate_all(config, !keys_failed, &mut problems);
    problems.retain(|problem| !failed.contains(top_level_key(&problem.key)));
    problems
}

fn top_level_key(key: &str) -> &str {
    key.split(['.', '[']).next().unwrap_or(key)
}

fn validate_all(config: &Config, check_key_requirement: bool, problems: &mut Vec<Problem>) {
    validate_listener(config, check_key_requirement, problems);
    validate_keys(config, problems);
    validate_providers(config, problems);
    for (name, extension) in &config.extensions {
        validate_extension(&format!("extensions.{name}"), name, extension, problems);
    }
    validate_store(config, problems);
    validate_agent(config, problems);
    validate_limits(config, problems);
    validate_rate_limits(config, problems);
    validate_tls(config, problems);
    validate_log(config, problems);
    validate_cors(config, problems);
}

/// Returns whether `host` names a loopback address.
pub fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Returns whether any key is configured, by `api_key` or `api_keys`.
pub fn has_keys(config: &Config) -> bool {
    config.api_key.is_some() || !config.api_keys.is_empty()
}

fn validate_listener(config: &Config, check_key_requirement: bool, problems: &mut Vec<Problem>) {
    if config.host != "localhost" && config.host.parse::<IpAddr>().is_err() {
        problems.push(Problem::new(
            "host",
            format!(
                "invalid address {:?}; use an IP address such as 127.0.0.1 or 0.0.0.0",
                config.host
            ),
        ));
    } else if check_key_requirement && !is_loopback(&config.host) && !has_keys(config) {
        problems.push(Problem::new(
            "host",
            format!(
                "no API key is configured but host {} is not a loopback address; set api_key \
                 or api_keys, or listen on 127.0.0.1",
                config.host
            ),
        ));
    }
}

fn validate_keys(config: &Config, problems: &mut Vec<Problem>) {
    if let Some(key) = &config.api_key {
        check_key_length("api_key", key.expose(), problems);
    }
    let mut names = BTreeSet::new();
    // Key digests and the names they belong to, so that no two names share a key.
    let mut digests = BTreeMap::new();
    if let Some(key) = &config.api_key {
        names.insert(super::keys::SINGLE_KEY_NAME.to_owned());
        digests.insert(
            super::keys::sha256(key.expose()),
            super::keys::SINGLE_KEY_NAME,
        );
    }
    for (index, entry) in config.api_keys.iter().enumerate() {
        let at = format!("api_keys[{index}]");
        let digest = match (&entry.key, &entry.key_sha256) {
            (Some(key), None) => Some(super::keys::sha256(key.expose())),
            (None, Some(digest)) => Some(super::keys::decode_digest(digest.expose())),
            _ => None,
        };
        if let Some(digest) = digest
            && let Some(other) = digests.insert(digest, entry.name.as_str())
        {
            problems.push(Problem::new(
                at.clone(),
                format!(
                    "key {:?} has the same key as {other:?}, so requests could not tell them \
                     apart; give each name its own key",
                    entry.name
                ),
            ));
        }
        if entry.name.trim().is_empty() {
            problems.push(Problem::new(format!("{at}.name"), "must not be empty"));
        } else if entry.name.chars().any(char::is_control) {
            problems.push(Problem::new(
                format!("{at}.name"),
                "must not contain control characters such as line breaks, because the name \
                 appears in logs and as the owner of sessions",
            ));
        } else if !names.insert(entry.name.clone()) {
            problems.push(Problem::new(
                format!("{at}.name"),
                format!(
                    "duplicate key name {:?}; give each key its own name",
                    entry.name
                ),
            ));
        }
        match (&entry.key, &entry.key_sha256) {
            (Some(key), None) => check_key_length(&format!("{at}.key"), key.expose(), problems),
            (None, Some(digest)) => {
                let valid = digest.expose().len() == 64
                    && digest.expose().chars().all(|c| c.is_ascii_hexdigit());
                if !valid {
                    problems.push(Problem::new(
                        format!("{at}.key_sha256"),
                        "must be 64 hex digits, as printed by `printf %s KEY | sha256sum`",
                    ));
                } else if super::keys::decode_digest(digest.expose()) == super::keys::sha256("") {
                    problems.push(Problem::new(
                        format!("{at}.key_sha256"),
                        "is the SHA-256 of an empty key, which would let an empty x-api-key \
                         header in; hash the key itself, and check that the variable \
                         holding it was set",
                    ));
                }
            }
            _ => problems.push(Problem::new(
                at,
                "set exactly one of `key` and `key_sha256`",
            )),
        }
    }
}

fn check_key_length(at: &str, key: &str, problems: &mut Vec<Problem>) {
    if key.chars().count() < MIN_KEY_LENGTH {
        problems.push(Problem::new(
            at,
            format!(
                "key is shorter than {MIN_KEY_LENGTH} characters; generate one with \
                 `openssl rand -hex 32`"
            ),
        ));
    }
}

fn validate_providers(config: &Config, problems: &mut Vec<Problem>) {
    let provider_known = config.providers.contains_key(&config.provider)
        || ProviderKind::from_name(&config.provider).is_some();
    if !provider_known {
        problems.push(Problem::new(
            "provider",
            format!(
                "unknown provider {:?}; use openai, anthropic, ollama or google, or define \
                 providers.{}",
                config.provider, config.provider
            ),
        ));
    }
    if config.model.trim().is_empty() {
        problems.push(Problem::new("model", "must not be empty"));
    }
    for (name, provider) in &config.providers {
        let at = format!("providers.{name}");
        if provider.kind.is_none() && ProviderKind::from_name(name).is_none() {
            problems.push(Problem::new(
                format!("{at}.kind"),
                "missing; set kind to openai, anthropic, ollama or google",
            ));
        }
        if let Some(base_url) = &provider.base_url {
            check_http_url(&format!("{at}.base_url"), base_url, problems);
            check_provider_url_parts(&format!("{at}.base_url"), base_url, problems);
        }
        check_headers(&format!("{at}.headers"), &provider.headers, problems);
        let timeouts = [
            ("connect_timeout_secs", provider.connect_timeout_secs),
            ("read_timeout_secs", provider.read_timeout_secs),
        ];
        for (key, value) in timeouts {
            if value == Some(0) {
                problems.push(Problem::new(format!("{at}.{key}"), "must be at least 1"));
            }
        }
        if provider
            .temperature
            .is_some_and(|t| !(0.0..=2.0).contains(&t))
        {
            problems.push(Problem::new(
                format!("{at}.temperature"),
                "must be between 0 and 2",
            ));
        }
    }
}

/// Maximum length of an extension name, whose characters are ASCII. The name prefixes each of its tools in requests to the provider,
/// and it is the manifest's file name.
pub const MAX_EXTENSION_NAME_CHARS: usize = 64;

/// Checks one extension definition; `at` is the key path used in messages.
pub fn validate_extension(
    at: &str,
    name: &str,
    extension: &ExtensionConfig,
    problems: &mut Vec<Problem>,
) {
    let valid_name = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if !valid_name || name.contains(crate::tools::NAMESPACE_SEPARATOR) {
        problems.push(Problem::new(
            at,
            format!(
                "invalid extension name {name:?}; use letters, digits, `-` and single `_`, \
                 because `__` separates extension and tool names"
            ),
        ));
    } else if name.len() > MAX_EXTENSION_NAME_CHARS {
        problems.push(Problem::new(
            at,
            format!(
                "extension name of {} characters is too long; use at most \
                 {MAX_EXTENSION_NAME_CHARS}",
                name.len()
            ),
        ));
    }
    if extension.timeout == 0 {
        problems.push(Problem::new(format!("{at}.timeout"), "must be at least 1"));
    }
    check_type_fields(at, extension, problems);
    crate::extensions::env::check_names(at, extension, problems);
    if let Some(uri) = &extension.uri {
        check_http_url(&format!("{at}.uri"), uri, problems);
    }
    check_headers(&format!("{at}.headers"), &extension.headers, problems);
}

/// Rejects fields that do not belong to the extension's type and requires the ones it needs.
fn check_type_fields(at: &str, extension: &ExtensionConfig, problems: &mut Vec<Problem>) {
    let kind = extension.kind;
    let stdio = kind == ExtensionKind::Stdio;
    let http = matches!(kind, ExtensionKind::StreamableHttp | ExtensionKind::Sse);
    let present = [
        ("cmd", extension.cmd.is_some(), stdio),
        ("args", !extension.args.is_empty(), stdio),
        ("envs", !extension.envs.is_empty(), stdio),
        ("env_keys", !extension.env_keys.is_empty(), stdio),
        ("cwd", extension.cwd.is_some(), stdio),
        ("uri", extension.uri.is_some(), http),
        ("headers", !extension.headers.is_empty(), http),
        (
            "name",
            extension.name.is_some(),
            kind == ExtensionKind::Builtin,
        ),
        (
            "path",
            extension.path.is_some(),
            kind == ExtensionKind::Plugin,
        ),
    ];
    let type_name = serde_json::to_value(kind)
        .ok()
        .and_then(|value| value.as_str().map(str::to_owned))
        .unwrap_or_default();
    for (field, is_set, allowed) in present {
        if is_set && !allowed {
            problems.push(Problem::new(
                format!("{at}.{field}"),
                format!("not valid for type {type_name}; remove it or change `type`"),
            ));
        }
    }
    let required = match kind {
        ExtensionKind::Stdio => Some(("cmd", extension.cmd.is_some())),
        ExtensionKind::StreamableHttp | ExtensionKind::Sse => {
            Some(("uri", extension.uri.is_some()))
        }
        ExtensionKind::Plugin => Some(("path", extension.path.is_some())),
        ExtensionKind::Builtin => None,
    };
    if let Some((field, false)) = required {
        problems.push(Problem::new(
            format!("{at}.{field}"),
            format!("missing; type {type_name} needs `{field}`"),
        ));
    }
}

fn validate_store(config: &Config, problems: &mut Vec<Problem>) {
    let url = config.store.url.expose();
    let supported = ["sqlite:", "postgres://", "postgresql://"];
    if !supported.iter().any(|prefix| url.starts_with(prefix)) {
        problems.push(Problem::new(
            "store.url",
            format!(
                "unsupported store URL {}; use sqlite://PATH or postgres://HOST/DATABASE",
                config.store.url
            ),
        ));
    }
}

fn validate_agent(config: &Config, problems: &mut Vec<Problem>) {
    let agent = &config.agent;
    if agent.max_steps == 0 {
        problems.push(Problem::new("agent.max_steps", "must be at least 1"));
    }
    if agent.max_tool_output_chars == 0 {
        problems.push(Problem::new(
            "agent.max_tool_output_chars",
            "must be at least 1",
        ));
    }
    if !(agent.summarize_threshold > 0.0 && agent.summarize_threshold <= 1.0) {
        problems.push(Problem::new(
            "agent.summarize_threshold",
            "must be a fraction above 0 and at most 1, such as 0.8",
        ));
    }
}

fn validate_limits(config: &Config, problems: &mut Vec<Problem>) {
    if config.limits.max_body_bytes == 0 {
        problems.push(Problem::new("limits.max_body_bytes", "must be at least 1"));
    }
    if config.sessions.idle_timeout_secs == 0 {
        problems.push(Problem::new(
            "sessions.idle_timeout_secs",
            "must be at least 1",
        ));
    }
    if config.sessions.sse_heartbeat_secs == 0 {
        problems.push(Problem::new(
            "sessions.sse_heartbeat_secs",
            "must be at least 1",
        ));
    }
    if config.limits.request_timeout_secs == 0 {
        problems.push(Problem::new(
            "limits.request_timeout_secs",
            "must be at least 1",
        ));
    }
}

/// Rejects zero rate and turn limits, which would refuse every request, and a burst
/// without a rate.
fn validate_rate_limits(config: &Config, problems: &mut Vec<Problem>) {
    let limits = &config.limits;
    let mut settings = vec![
        (
            "limits.requests_per_minute".to_owned(),
            limits.requests_per_minute,
        ),
        ("limits.burst".to_owned(), limits.burst),
        (
            "limits.max_concurrent_turns_per_key".to_owned(),
            limits.max_concurrent_turns_per_key,
        ),
        (
            "limits.max_concurrent_turns".to_owned(),
            limits.max_concurrent_turns,
        ),
    ];
    for (index, entry) in config.api_keys.iter().enumerate() {
        let at = format!("api_keys[{index}]");
        settings.push((
            format!("{at}.requests_per_minute"),
            entry.requests_per_minute,
        ));
        settings.push((format!("{at}.burst"), entry.burst));
        settings.push((
            format!("{at}.max_concurrent_turns"),
            entry.max_concurrent_turns,
        ));
        let has_rate = entry.requests_per_minute.is_some() || limits.requests_per_minute.is_some();
        if entry.burst.is_some() && !has_rate {
            problems.push(Problem::new(
                format!("{at}.burst"),
                "a burst needs a rate; set requests_per_minute for this key or \
                 limits.requests_per_minute",
            ));
        }
    }
    for (key, value) in settings {
        if value == Some(0) {
            problems.push(Problem::new(
                key,
                "must be at least 1; remove the key for no limit",
            ));
        }
    }
    if limits.burst.is_some() && limits.requests_per_minute.is_none() {
        problems.push(Problem::new(
            "limits.burst",
            "a burst needs a rate; set limits.requests_per_minute too",
        ));
    }
}

fn validate_tls(config: &Config, problems: &mut Vec<Problem>) {
    match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(_), None) => problems.push(Problem::new(
            "tls.key_file",
            "missing; TLS needs both tls.cert_file and tls.key_file",
        )),
        (None, Some(_)) => problems.push(Problem::new(
            "tls.cert_file",
            "missing; TLS needs both tls.cert_file and tls.key_file",
        )),
        _ => {}
    }
    let files = [
        ("tls.cert_file", &config.tls.cert_file),
        ("tls.key_file", &config.tls.key_file),
    ];
    for (key, path) in files {
        if let Some(path) = path
            && !path.is_file()
        {
            problems.push(Problem::new(
                key,
                format!(
                    "file {} not found; give the path of a PEM file, relative to the working \
                     directory or absolute",
                    path.display()
                ),
            ));
        }
    }
}

fn validate_log(config: &Config, problems: &mut Vec<Problem>) {
    if let Err(error) = EnvFilter::try_new(&config.log.level) {
        problems.push(Problem::new(
            "log.level",
            format!(
                "invalid filter {:?} ({error}); use a level such as info or debug",
                config.log.level
            ),
        ));
    }
}

fn validate_cors(config: &Config, problems: &mut Vec<Problem>) {
    for (index, origin) in config.cors.allowed_origins.iter().enumerate() {
        let parsed = url::Url::parse(origin);
        let valid = origin == "*"
            || (parsed.is_ok_and(|url| matches!(url.scheme(), "http" | "https"))
                && HeaderValue::from_str(origin).is_ok()
                && !origin.ends_with('/'));
        if !valid {
            problems.push(Problem::new(
                format!("cors.allowed_origins[{index}]"),
                format!(
                    "invalid origin {origin:?}; use scheme, host and optional port, such as \
                     https://app.example.com"
                ),
            ));
        }
    }
}

fn check_http_url(at: &str, value: &str, problems: &mut Vec<Problem>) {
    let valid = url::Url::parse(value).is_ok_and(|url| matches!(url.scheme(), "http" | "https"));
    if !valid {
        problems.push(Problem::new(
            at,
            format!("invalid URL {value:?}; use an http:// or https:// URL"),
        ));
    }
}

/// Rejects credentials and a query in a provider's base URL. The URL appears in status and
/// error output, where a credential must not, and request paths are appended to it, which
/// would land after a query.
fn check_provider_url_parts(at: &str, value: &str, problems: &mut Vec<Problem>) {
    let Ok(url) = url::Url::parse(value) else {
        return;
    };
    if !url.username().is_empty() || url.password().is_some() {
        problems.push(Problem::new(
            at,
            "must not contain a user name or password; put the credential in api_key or \
             headers of this provider",
        ));
    }
    if url.query().is_some() || url.fragment().is_some() {
        problems.push(Problem::new(
            at,
            "must not contain a query string or fragment, because request paths are appended \
             to the URL; put a key in api_key or headers of this provider",
        ));
    }
}

fn check_headers(at: &str, headers: &BTreeMap<String, Secret>, problems: &mut Vec<Problem>) {
    for (name, value) in headers {
        if HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(Problem::new(at, format!("invalid header name {name:?}")));
        } else if HeaderValue::from_str(value.expose()).is_err() {
            // The value may be a credential, so the message names only the header.
            problems.push(Problem::new(
                format!("{at}.{name}"),
                "invalid header value; remove control characters and line breaks",
            ));
        }
    }
}

//! The environment of a stdio MCP server: a small base from the daemon, `env_keys`, `envs`,
//! and the denylist of variables that change how programs load code.

use std::collections::BTreeMap;

use crate::config::{ExtensionConfig, Problem};

/// Variables that change which code a program loads or runs before its own. An extension
/// setting one could run arbitrary code inside every program its server starts.
const DENIED_NAMES: &[&str] = &[
    "PATH",
    "BASH_ENV",
    "ENV",
    "IFS",
    "SHELLOPTS",
    "PS4",
    "GCONV_PATH",
    "HOSTALIASES",
    "LOCALDOMAIN",
    "RESOLV_HOST_CONF",
    "MALLOC_CHECK_",
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "PYTHONUSERBASE",
    "PYTHONINSPECT",
    "NODE_OPTIONS",
    "NODE_PATH",
    "PERL5LIB",
    "PERL5OPT",
    "PERLLIB",
    "RUBYLIB",
    "RUBYOPT",
    "CLASSPATH",
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "GIT_EXEC_PATH",
];

/// Name prefixes denied as a family: the dynamic loaders of Linux (`LD_PRELOAD`,
/// `LD_LIBRARY_PATH`, `LD_AUDIT`, ...) and macOS (`DYLD_INSERT_LIBRARIES`, ...).
const DENIED_PREFIXES: &[&str] = &["LD_", "DYLD_"];

/// Variables passed from the daemon to every stdio server, so that ordinary programs find
/// their tools, home directory and locale. Anything else must be listed in `env_keys`,
/// because the daemon's environment holds credentials such as provider keys.
const BASE_NAMES: &[&str] = &[
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SHELL",
];

/// Returns whether `name` may not be set for an MCP server.
pub fn is_denied(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    DENIED_NAMES.contains(&upper.as_str())
        || DENIED_PREFIXES
            .iter()
            .any(|prefix| upper.starts_with(prefix))
}

/// Reports every denylisted name in `envs` and `env_keys`; `at` is the key path used in
/// messages. Only names appear in the messages, never values.
pub fn check_names(at: &str, extension: &ExtensionConfig, problems: &mut Vec<Problem>) {
    let names = extension
        .envs
        .keys()
        .map(|name| ("envs", name))
        .chain(extension.env_keys.iter().map(|name| ("env_keys", name)));
    for (field, name) in names {
        if let Some(reason) = invalid_name_reason(name) {
            problems.push(Problem::new(
                format!("{at}.{field}"),
                format!(
                    "invalid variable name {}: {reason}; use a name such as API_TOKEN",
                    shown_name(name)
                ),
            ));
        } else if is_denied(name) {
            problems.push(Problem::new(
                format!("{at}.{field}"),
                format!(
                    "variable {name} is not allowed because it changes how programs load \
                     code; remove it, or wrap the server in a script that sets it"
                ),
            ));
        }
    }
}

/// Returns why `name` cannot be an environment variable name, or `None` if it can. A child
/// reads each `NAME=value` entry up to its first `=` as the name, and a NUL ends the entry,
/// so a name containing either sets a different variable than the denylist checked.
fn invalid_name_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name.contains('=') {
        Some("it contains `=`")
    } else if name.contains('\0') {
        Some("it contains a NUL character")
    } else {
        None
    }
}

/// Formats an invalid name for a message: the part before the first `=` or NUL, quoted,
/// because what follows an `=` is meant as a value and may be a secret.
fn shown_name(name: &str) -> String {
    match name.find(['=', '\0']) {
        Some(end) => format!("{:?} (cut at position {end})", &name[..end]),
        None => format!("{name:?}"),
    }
}

/// Builds the child's environment from `daemon_env`: the base variables, then `env_keys`,
/// then `envs`, later entries replacing earlier ones.
pub fn child_env(
    extension: &ExtensionConfig,
    daemon_env: impl Fn(&str) -> Option<String>,
) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for name in BASE_NAMES
        .iter()
        .copied()
        .chain(extension.env_keys.iter().map(String::as_str))
    {
        if let Some(value) = daemon_env(name) {
            env.insert(name.to_owned(), value);
        }
    }
    for (name, value) in &extension.envs {
        env.insert(name.clone(), value.expose().to_owned());
    }
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denylist_covers_loader_families() {
        for name in [
            "PATH",
            "LD_PRELOAD",
            "ld_library_path",
            "DYLD_INSERT_LIBRARIES",
        ] {
            assert!(is_denied(name), "{name} should be denied");
        }
        for name in ["PYTHONPATH", "NODE_OPTIONS", "BASH_ENV"] {
            assert!(is_denied(name), "{name} should be denied");
        }
        for name in ["API_TOKEN", "HOME", "LOAD_LEVEL", "NODE_ENV"] {
            assert!(!is_denied(name), "{name} should be allowed");
        }
    }

    fn problems_for(envs: &[&str], env_keys: &[&str]) -> Vec<Problem> {
        let text = serde_json::json!({
            "type": "stdio",
            "cmd": "x",
            "envs": envs.iter().map(|name| (*name, "v")).collect::<BTreeMap<_, _>>(),
            "env_keys": env_keys,
        });
        let extension: ExtensionConfig = serde_json::from_value(text).expect("an extension");
        let mut problems = Vec::new();
        check_names("extensions.e8", &extension, &mut problems);
        problems
    }

    #[test]
    fn empty_equals_and_nul_names_rejected() {
        let smuggled = "NODE_OPTIONS=--require /tmp/evil.js ";
        for name in [smuggled, "", "A\0B", "=x"] {
            let problems = problems_for(&[name], &[]);
            assert_eq!(problems.len(), 1, "envs {name:?}: {problems:?}");
            assert_eq!(problems[0].key, "extensions.e8.envs");
            assert!(
                problems[0].message.contains("invalid variable name"),
                "{problems:?}"
            );
            let problems = problems_for(&[], &[name]);
            assert_eq!(problems.len(), 1, "env_keys {name:?}: {problems:?}");
            assert_eq!(problems[0].key, "extensions.e8.env_keys");
        }
        let message = &problems_for(&[smuggled], &[])[0].message;
        assert!(message.contains("\"NODE_OPTIONS\""), "{message}");
        assert!(message.contains("`=`"), "{message}");
        assert!(!message.contains("evil"), "{message}");
        assert!(problems_for(&["API_TOKEN"], &["HOME"]).is_empty());
    }
}

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
        if is_denied(name) {
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
}

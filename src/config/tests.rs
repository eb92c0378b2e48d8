//! Precedence of defaults, file and environment, and the file lookup.

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn sources_in(dir: &Path, pairs: &[(&str, &str)]) -> Sources {
    Sources {
        cli_path: None,
        env: env(pairs),
        working_dir: dir.to_path_buf(),
    }
}

fn load_ok(sources: &Sources) -> Loaded {
    match load(sources) {
        Ok(loaded) => loaded,
        Err(error) => panic!("config should load: {error}"),
    }
}

#[test]
fn defaults_apply_without_file_or_environment() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let loaded = load_ok(&sources_in(dir.path(), &[]));
    assert_eq!(loaded.file, None);
    assert_eq!(loaded.config, Config::default());
    assert_eq!(loaded.config.host, "127.0.0.1");
    assert_eq!(loaded.config.port, 8080);
}

#[test]
fn file_overrides_defaults_and_environment_overrides_file() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let yaml = "port: 9001\nmodel: from-file\nlimits:\n  max_body_bytes: 1000\n  \
                request_timeout_secs: 7\n";
    std::fs::write(dir.path().join("config.yaml"), yaml).expect("write config");

    let file_only = load_ok(&sources_in(dir.path(), &[])).config;
    assert_eq!(file_only.port, 9001);
    assert_eq!(file_only.model, "from-file");
    assert_eq!(file_only.limits.max_body_bytes, 1000);
    assert_eq!(
        file_only.provider, "openai",
        "unset keys keep their default"
    );

    let vars = [
        ("GOOSE_API_PORT", "9002"),
        ("GOOSE_API_MODEL", "from-env"),
        ("GOOSE_API_LIMITS__MAX_BODY_BYTES", "2000"),
    ];
    let layered = load_ok(&sources_in(dir.path(), &vars)).config;
    assert_eq!(layered.port, 9002);
    assert_eq!(layered.model, "from-env");
    assert_eq!(layered.limits.max_body_bytes, 2000);
    assert_eq!(
        layered.limits.request_timeout_secs, 7,
        "sibling keys keep the file value"
    );
}

#[test]
fn file_named_config_is_read_in_each_format() {
    let cases = [
        (
            "yaml",
            "model: m-yaml\nlimits:\n  max_body_bytes: 11\n",
            "m-yaml",
            11,
        ),
        (
            "toml",
            "model = \"m-toml\"\n[limits]\nmax_body_bytes = 12\n",
            "m-toml",
            12,
        ),
        (
            "json",
            "{\"model\": \"m-json\", \"limits\": {\"max_body_bytes\": 13}}",
            "m-json",
            13,
        ),
    ];
    for (format, text, model, limit) in cases {
        let dir = tempfile::tempdir().expect("temporary directory");
        std::fs::write(dir.path().join("config"), text).expect("write config");
        let loaded = load_ok(&sources_in(dir.path(), &[]));
        assert_eq!(loaded.file, Some(dir.path().join("config")), "{format}");
        assert_eq!(loaded.config.model, model, "{format}");
        assert_eq!(loaded.config.limits.max_body_bytes, limit, "{format}");
    }
}

#[test]
fn lookup_prefers_cli_then_variable_then_working_directory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    for (name, model) in [("a.yaml", "a"), ("b.yaml", "b"), ("config.yaml", "c")] {
        std::fs::write(dir.path().join(name), format!("model: {model}\n")).expect("write");
    }
    let mut sources = sources_in(dir.path(), &[("GOOSE_API_CONFIG", "b.yaml")]);
    sources.cli_path = Some(PathBuf::from("a.yaml"));
    assert_eq!(load_ok(&sources).config.model, "a");
    sources.cli_path = None;
    assert_eq!(load_ok(&sources).config.model, "b");
    sources.env.clear();
    assert_eq!(load_ok(&sources).config.model, "c");
}

#[test]
fn missing_explicit_file_is_an_error() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let mut sources = sources_in(dir.path(), &[]);
    sources.cli_path = Some(PathBuf::from("nope.yaml"));
    let error = load(&sources).expect_err("a missing --config file must fail");
    assert!(error.to_string().contains("nope.yaml"), "{error}");
}

#[test]
fn errors_name_file_or_variable() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("config.yaml"), "prot: 1\n").expect("write config");
    let sources = sources_in(dir.path(), &[("GOOSE_API_PORT", "not-a-port")]);
    let error = load(&sources).expect_err("two problems");
    let text = error.to_string();
    assert_eq!(error.problems.len(), 2, "{text}");
    assert!(
        text.contains("config.yaml: key `prot`: unknown key"),
        "{text}"
    );
    assert!(
        text.contains("environment variable GOOSE_API_PORT: key `port`"),
        "{text}"
    );
}

#[test]
fn non_loopback_host_without_key_is_rejected() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let sources = sources_in(dir.path(), &[("GOOSE_API_HOST", "0.0.0.0")]);
    let error = load(&sources).expect_err("must refuse");
    assert!(
        error.to_string().contains("not a loopback address"),
        "{error}"
    );
    let keyed = sources_in(
        dir.path(),
        &[
            ("GOOSE_API_HOST", "0.0.0.0"),
            ("GOOSE_API_KEY", "0123456789abcdef"),
        ],
    );
    assert_eq!(load_ok(&keyed).config.host, "0.0.0.0");
}

#[test]
fn semantic_problems_are_all_reported() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let yaml = r#"
api_key: short
provider: nosuch
store:
  url: mysql://x
log:
  level: "not a level["
extensions:
  fs:
    type: stdio
    uri: http://127.0.0.1:1/mcp
"#;
    std::fs::write(dir.path().join("config.yaml"), yaml).expect("write config");
    let error = load(&sources_in(dir.path(), &[])).expect_err("invalid");
    let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
    for expected in [
        "api_key",
        "provider",
        "store.url",
        "log.level",
        "extensions.fs.uri",
        "extensions.fs.cmd",
    ] {
        assert!(keys.contains(&expected), "{expected} missing from {keys:?}");
    }
}

#[test]
fn provider_url_with_credentials_or_query_is_rejected() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let yaml = "providers:\n  \
                a:\n    kind: openai\n    base_url: https://user:pw-secret-1@example.test/v1\n  \
                b:\n    kind: openai\n    base_url: https://example.test/v1?key=query-secret-2\n";
    std::fs::write(dir.path().join("config.yaml"), yaml).expect("write config");
    let error = load(&sources_in(dir.path(), &[])).expect_err("invalid");
    let message = error.to_string();
    let keys: Vec<&str> = error.problems.iter().map(|p| p.key.as_str()).collect();
    assert_eq!(
        keys,
        ["providers.a.base_url", "providers.b.base_url"],
        "{message}"
    );
    assert!(message.contains("user name or password"), "{message}");
    assert!(message.contains("query string"), "{message}");
    assert!(!message.contains("pw-secret-1"), "{message}");
    assert!(!message.contains("query-secret-2"), "{message}");
}

#[test]
fn shipped_example_config_is_valid() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("config.example.yaml")).expect("read example");
    let path = root.join("config.example.yaml");
    if let Err(error) = build(Some(&path), Some(&text), &HashMap::new()) {
        panic!("config.example.yaml is invalid: {error}");
    }
}

#[test]
fn shipped_extension_examples_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("extensions");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("read extensions directory") {
        let path = entry.expect("directory entry").path();
        let file_name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        let Some(name) = file_name.strip_suffix(".yaml.example") else {
            continue;
        };
        let text = std::fs::read_to_string(&path).expect("read example");
        let manifest = parse(&text, Format::Yaml).expect("example parses as YAML");
        let tree = serde_json::json!({ "extensions": { name: manifest } });
        let (config, mut problems) = decode::decode(tree);
        problems.extend(validate::validate_decoded(&config, &problems));
        assert_eq!(problems, Vec::new(), "{file_name}");
        assert!(
            !config.extensions[name].enabled,
            "{file_name} must ship disabled"
        );
        checked += 1;
    }
    assert!(
        checked >= 2,
        "expected the shipped examples, found {checked}"
    );
}

#[test]
fn variable_problems_come_with_file_problems() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("config.yaml"), "prot: 1\n").expect("write config");
    let pairs = [
        ("GOOSE_API_KEY", "0123456789abcdef"),
        ("GOOSE_API_API_KEY", "fedcba9876543210"),
        ("GOOSE_API_LIMITS____BURST", "3"),
    ];
    let error = load(&sources_in(dir.path(), &pairs)).expect_err("three problems");
    let text = error.to_string();
    assert_eq!(error.problems.len(), 3, "{text}");
    assert!(
        text.contains("both GOOSE_API_KEY and GOOSE_API_API_KEY"),
        "{text}"
    );
    assert!(text.contains("empty key segment"), "{text}");
    assert!(text.contains("key `prot`: unknown key"), "{text}");
}

#[test]
fn unparsable_file_comes_with_variable_problems() {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::write(dir.path().join("config.yaml"), "port: [1\n").expect("write config");
    let pairs = [("GOOSE_API_LIMITS____BURST", "3")];
    let error = load(&sources_in(dir.path(), &pairs)).expect_err("two problems");
    let text = error.to_string();
    assert_eq!(error.problems.len(), 2, "{text}");
    assert!(text.contains("cannot parse the config file"), "{text}");
    assert!(text.contains("empty key segment"), "{text}");
}

#[test]
fn shared_key_value_is_rejected() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let bob_digest = hex::encode(keys::sha256("bob-key-0123456789"));
    let text = format!(
        "api_key: admin-key-0123456789\napi_keys:\n  \
         - {{name: alice, key: admin-key-0123456789, role: user}}\n  \
         - {{name: bob, key: bob-key-0123456789, role: user}}\n  \
         - {{name: carol, key_sha256: {bob_digest}, role: admin}}\n"
    );
    std::fs::write(dir.path().join("config.yaml"), text).expect("write config");
    let error = load(&sources_in(dir.path(), &[])).expect_err("two problems");
    let message = error.to_string();
    assert_eq!(error.problems.len(), 2, "{message}");
    assert!(
        message.contains(r#"key "alice" has the same key as "default""#),
        "{message}"
    );
    assert!(
        message.contains(r#"key "carol" has the same key as "bob""#),
        "{message}"
    );
    assert!(!message.contains("admin-key-0123456789"), "{message}");
}

#[test]
fn empty_key_digest_and_control_names_are_rejected() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let empty_digest = hex::encode(keys::sha256(""));
    let text = format!(
        "api_keys:\n  \
         - {{name: unset, key_sha256: {empty_digest}, role: admin}}\n  \
         - {{name: \"two\\nlines\", key: bob-key-0123456789, role: user}}\n"
    );
    std::fs::write(dir.path().join("config.yaml"), text).expect("write config");
    let error = load(&sources_in(dir.path(), &[])).expect_err("two problems");
    let message = error.to_string();
    assert_eq!(error.problems.len(), 2, "{message}");
    assert!(
        message.contains("api_keys[0].key_sha256") && message.contains("empty key"),
        "{message}"
    );
    assert!(
        message.contains("api_keys[1].name") && message.contains("control characters"),
        "{message}"
    );
}

#[test]
fn malformed_json_variable_names_json() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let value = r#"[{"name": "a", "key": "ENVSECRET-0123456789abcdef", "role": "admin""#;
    let sources = sources_in(dir.path(), &[("GOOSE_API_API_KEYS", value)]);
    let error = load(&sources).expect_err("malformed JSON");
    let text = error.to_string();
    assert!(
        text.contains("environment variable GOOSE_API_API_KEYS"),
        "{text}"
    );
    assert!(text.contains("must be valid JSON"), "{text}");
    assert!(!text.contains("ENVSECRET"), "{text}");
}

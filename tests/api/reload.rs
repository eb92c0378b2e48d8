//! Hot reload: every way tools replace a file, SIGHUP, invalid edits and bursts.

use std::os::unix::fs::symlink;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;

use crate::helpers::{ADMIN_KEY, Daemon, Launch, WAIT, config_with_key, rename_save};

fn with_model(model: &str) -> String {
    config_with_key(&format!("model: {model}\n"))
}

async fn generation(daemon: &Daemon) -> u64 {
    daemon.config_status().await["generation"]
        .as_u64()
        .unwrap_or_default()
}

#[tokio::test]
async fn write_in_place_reloads() {
    let daemon = Daemon::start(&with_model("first")).await;
    std::fs::write(daemon.path("config.yaml"), with_model("second")).expect("write");
    daemon.wait_for_model("second").await;
}

#[tokio::test]
async fn rename_over_reloads() {
    let daemon = Daemon::start(&with_model("first")).await;
    rename_save(&daemon.path("config.yaml"), &with_model("second"));
    daemon.wait_for_model("second").await;
}

#[tokio::test]
async fn vim_style_backup_and_write_reloads() {
    let daemon = Daemon::start(&with_model("first")).await;
    let path = daemon.path("config.yaml");
    let backup = daemon.path("config.yaml~");
    std::fs::rename(&path, &backup).expect("move the original to the backup name");
    std::fs::write(&path, with_model("second")).expect("write the new file");
    std::fs::remove_file(&backup).expect("remove the backup");
    daemon.wait_for_model("second").await;
}

#[tokio::test]
async fn sed_in_place_reloads() {
    let daemon = Daemon::start(&with_model("first")).await;
    let status = std::process::Command::new("sed")
        .arg("-i")
        .arg("s/model: first/model: second/")
        .arg(daemon.path("config.yaml"))
        .status()
        .expect("run sed");
    assert!(status.success());
    daemon.wait_for_model("second").await;
}

#[tokio::test]
async fn truncate_then_write_reloads() {
    use std::io::Write;
    let daemon = Daemon::start(&with_model("first")).await;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(daemon.path("config.yaml"))
        .expect("truncate");
    // Longer than the watcher's quiet period, so the empty file is seen on its own.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        daemon.model().await,
        "first",
        "an empty file must not reset the config"
    );
    file.write_all(with_model("second").as_bytes())
        .expect("write");
    drop(file);
    daemon.wait_for_model("second").await;
    assert_eq!(
        daemon.config_status().await["last_reload_error"],
        Value::Null
    );
}

/// Swaps `..data` to a new timestamped directory holding `model`, as the kubelet does.
fn configmap_swap(mount: &Path, stamp: &str, model: &str) {
    let data_dir = mount.join(stamp);
    std::fs::create_dir(&data_dir).expect("new data directory");
    std::fs::write(data_dir.join("config.yaml"), with_model(model)).expect("write data");
    let temp_link = mount.join("..data_tmp");
    symlink(stamp, &temp_link).expect("temporary link");
    let old = std::fs::read_link(mount.join("..data")).expect("read ..data");
    std::fs::rename(&temp_link, mount.join("..data")).expect("swap ..data");
    std::fs::remove_dir_all(mount.join(old)).expect("remove old data directory");
}

#[tokio::test]
async fn configmap_symlink_swap_reloads() {
    // The layout the kubelet creates for a mounted ConfigMap: the config path is a symlink
    // through `..data`, which points at a timestamped directory.
    let staging = tempfile::tempdir().expect("staging directory");
    let mount = staging.path().join("mount");
    let stamp = "..2026_12_04_00_00_00.1";
    std::fs::create_dir_all(mount.join(stamp)).expect("data directory");
    std::fs::write(mount.join(stamp).join("config.yaml"), with_model("first")).expect("write");
    symlink(stamp, mount.join("..data")).expect("..data link");
    symlink("..data/config.yaml", mount.join("config.yaml")).expect("config link");
    let launch = Launch {
        config_arg: Some(mount.join("config.yaml").display().to_string()),
        ..Launch::default()
    };
    let daemon = Daemon::launch(launch).await;
    assert_eq!(daemon.model().await, "first");

    configmap_swap(&mount, "..2026_12_04_00_01_00.2", "second");
    daemon.wait_for_model("second").await;
    // A second swap proves the watch follows the new data directory.
    configmap_swap(&mount, "..2026_12_04_00_02_00.3", "third");
    daemon.wait_for_model("third").await;
}

#[tokio::test]
async fn sighup_reloads() {
    let daemon = Daemon::start(&with_model("first")).await;
    let before = generation(&daemon).await;
    daemon.signal(Signal::SIGHUP);
    let started = Instant::now();
    while generation(&daemon).await == before {
        assert!(started.elapsed() < WAIT, "SIGHUP did not reload");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(daemon.stderr_text().contains("SIGHUP received"));
}

#[tokio::test]
async fn invalid_edit_keeps_old_config_until_fixed() {
    let daemon = Daemon::start(&with_model("first")).await;
    rename_save(
        &daemon.path("config.yaml"),
        &(with_model("second") + "limits:\n  max_body_bytez: 5\n"),
    );
    let started = Instant::now();
    let status = loop {
        let status = daemon.config_status().await;
        if !status["last_reload_error"].is_null() {
            break status;
        }
        assert!(started.elapsed() < WAIT, "invalid edit not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let error = status["last_reload_error"].to_string();
    assert!(error.contains("config.yaml"), "{error}");
    assert!(error.contains("limits.max_body_bytez"), "{error}");
    assert!(error.contains("unknown key"), "{error}");
    assert_eq!(daemon.model().await, "first");
    assert_eq!(status["generation"], 1);
    let logs = daemon.stderr_text();
    assert!(
        logs.contains("\"level\":\"ERROR\"") && logs.contains("max_body_bytez"),
        "{logs}"
    );
    // A reload request for the same invalid file reports its problems, not "unchanged".
    let (status, body) = daemon
        .post_value("/config/reload", ADMIN_KEY, serde_json::json!({}))
        .await;
    assert_eq!(status, reqwest::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["code"], "invalid_config", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("limits.max_body_bytez"), "{message}");

    rename_save(&daemon.path("config.yaml"), &with_model("third"));
    daemon.wait_for_model("third").await;
    let status = daemon.config_status().await;
    assert_eq!(status["last_reload_error"], Value::Null);
    assert_eq!(status["generation"], 2);
}

#[tokio::test]
async fn burst_of_writes_reloads_once() {
    let daemon = Daemon::start(&with_model("m0")).await;
    let path = daemon.path("config.yaml");
    for index in 1..=20 {
        std::fs::write(&path, with_model(&format!("m{index}"))).expect("write");
    }
    daemon.wait_for_model("m20").await;
    // Give a stray second reload time to happen before counting.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = daemon.config_status().await;
    assert_eq!(status["generation"], 2, "{status}");
    assert_eq!(status["reloads_applied"], 1, "{status}");
}

#[tokio::test]
async fn restart_only_setting_keeps_running_value() {
    let daemon = Daemon::start(&with_model("first")).await;
    let edited = with_model("second")
        .replace("port: 0", "port: 1")
        .replace("format: json", "format: json\n  level: debug")
        + "limits:\n  header_read_timeout_secs: 0\n";
    rename_save(&daemon.path("config.yaml"), &edited);
    daemon.wait_for_model("second").await;
    let status = daemon.config_status().await;
    let pending = status["restart_required"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // The header read timeout applies live, also when it is turned off.
    assert_eq!(pending.len(), 1, "{status}");
    assert_eq!(pending[0]["key"], "port");
    assert_eq!(pending[0]["configured"], "1");
    assert_eq!(
        daemon.get("/health", ADMIN_KEY).await.status(),
        reqwest::StatusCode::OK
    );
}

#[tokio::test]
async fn removing_every_key_is_rejected() {
    let daemon = Daemon::start(&with_model("first")).await;
    rename_save(
        &daemon.path("config.yaml"),
        "port: 0\nmodel: second\nlog:\n  format: json\n",
    );
    let started = Instant::now();
    while daemon.config_status().await["last_reload_error"].is_null() {
        assert!(started.elapsed() < WAIT, "key removal not rejected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(daemon.model().await, "first");
}

#[tokio::test]
async fn recreated_config_directory_reloads() {
    let launch = Launch {
        files: vec![("conf/config.yaml".to_owned(), with_model("first"))],
        config_arg: Some("conf/config.yaml".to_owned()),
        ..Launch::default()
    };
    let daemon = Daemon::launch(launch).await;
    let dir = daemon.path("conf");

    // Deleted and made again, as `rm -rf` and a provisioning tool do.
    std::fs::remove_dir_all(&dir).expect("remove the config directory");
    std::fs::create_dir(&dir).expect("create the config directory again");
    std::fs::write(dir.join("config.yaml"), with_model("second")).expect("write");
    daemon.wait_for_model("second").await;
    rename_save(&dir.join("config.yaml"), &with_model("third"));
    daemon.wait_for_model("third").await;

    // Moved aside and replaced by a new directory.
    std::fs::rename(&dir, daemon.path("conf.old")).expect("move the config directory");
    std::fs::create_dir(&dir).expect("create a new config directory");
    std::fs::write(dir.join("config.yaml"), with_model("fourth")).expect("write");
    daemon.wait_for_model("fourth").await;
    std::fs::write(dir.join("config.yaml"), with_model("fifth")).expect("write in place");
    daemon.wait_for_model("fifth").await;

    // Missing long enough for the failed reload to show, then back.
    std::fs::remove_dir_all(&dir).expect("remove the config directory");
    let started = Instant::now();
    while daemon.config_status().await["last_reload_error"].is_null() {
        assert!(started.elapsed() < WAIT, "the removal was not reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::create_dir(&dir).expect("create the config directory again");
    std::fs::write(dir.join("config.yaml"), with_model("sixth")).expect("write");
    daemon.wait_for_model("sixth").await;
    let status = daemon.config_status().await;
    assert!(status["last_reload_error"].is_null(), "{status}");
}

//! HTTPS on the listener with a certificate made by the test, and its replacement while the
//! daemon serves.

use std::time::Instant;

use reqwest::StatusCode;

use crate::helpers::{Daemon, Launch, WAIT, client_for, config_with_key};

/// Generates a self-signed certificate for `localhost` and its key, both PEM.
fn certificate() -> (String, String) {
    let issued = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .expect("generate a certificate");
    (issued.cert.pem(), issued.signing_key.serialize_pem())
}

fn tls_launch(cert: &str, key: &str) -> Launch {
    let config = config_with_key("tls:\n  cert_file: tls/cert.pem\n  key_file: tls/key.pem\n");
    let mut launch = Launch::with_config(&config);
    launch
        .files
        .push(("tls/cert.pem".to_owned(), cert.to_owned()));
    launch
        .files
        .push(("tls/key.pem".to_owned(), key.to_owned()));
    launch.trusted_cert = Some(cert.to_owned());
    launch
}

#[tokio::test]
async fn request_over_tls_succeeds() {
    let (cert, key) = certificate();
    let daemon = Daemon::launch(tls_launch(&cert, &key)).await;
    assert!(daemon.base_url.starts_with("https://"));
    let response = daemon.http.get(daemon.url("/health")).send().await;
    let response = response.expect("HTTPS request");
    assert_eq!(response.status(), StatusCode::OK);

    let plain = reqwest::Client::new()
        .get(format!("http://{}/health", daemon.addr))
        .timeout(WAIT)
        .send()
        .await;
    assert!(plain.is_err(), "plain HTTP is not served: {plain:?}");
}

#[tokio::test]
async fn replaced_certificate_serves_new_connections() {
    let (old_cert, old_key) = certificate();
    let daemon = Daemon::launch(tls_launch(&old_cert, &old_key)).await;
    // This request leaves an idle kept-alive connection made with the old certificate.
    let first = daemon.http.get(daemon.url("/health")).send().await;
    assert_eq!(first.expect("HTTPS request").status(), StatusCode::OK);

    let (new_cert, new_key) = certificate();
    let dir = daemon.path("tls");
    std::fs::write(dir.join("key.pem.new"), &new_key).expect("write the new key");
    std::fs::write(dir.join("cert.pem.new"), &new_cert).expect("write the new certificate");
    std::fs::rename(dir.join("key.pem.new"), dir.join("key.pem")).expect("replace the key");
    std::fs::rename(dir.join("cert.pem.new"), dir.join("cert.pem")).expect("replace the cert");

    let (new_client, base_url) = client_for(daemon.addr, Some(&new_cert));
    let started = Instant::now();
    loop {
        let response = new_client.get(format!("{base_url}/health")).send().await;
        if response.is_ok_and(|response| response.status() == StatusCode::OK) {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "the new certificate was not served; logs:\n{}",
            daemon.stderr_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    let (old_only, _) = client_for(daemon.addr, Some(&old_cert));
    let rejected = old_only.get(format!("{base_url}/health")).send().await;
    assert!(
        rejected.is_err(),
        "a new connection still got the old certificate"
    );
    let kept = daemon.http.get(daemon.url("/health")).send().await;
    let kept = kept.expect("the connection made before the swap still serves");
    assert_eq!(kept.status(), StatusCode::OK);
}

#[tokio::test]
async fn missing_certificate_file_is_rejected() {
    let (_, key) = certificate();
    let config = config_with_key("tls:\n  cert_file: tls/cert.pem\n  key_file: tls/key.pem\n");
    let mut launch = Launch::with_config(&config);
    launch.files.push(("tls/key.pem".to_owned(), key));
    let failure = match Daemon::try_launch(launch).await {
        Ok(_) => panic!("the daemon started without its certificate file"),
        Err(failure) => failure,
    };
    assert_eq!(failure.status.code(), Some(64), "{}", failure.stderr);
    assert!(
        failure.stderr.contains("tls.cert_file"),
        "{}",
        failure.stderr
    );
    assert!(failure.stderr.contains("not found"), "{}", failure.stderr);
    assert!(
        !failure.stderr.contains("tls.key_file"),
        "{}",
        failure.stderr
    );
}

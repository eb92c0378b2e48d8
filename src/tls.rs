//! TLS on the listener with rustls: the certificate is read from PEM files and replaced
//! for new connections when the files change, while open connections keep theirs.

mod listener;
mod watch;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use listener::TlsListener;
pub use watch::spawn_cert_watcher;

/// The certificate served to new connections, reloadable from its files.
pub struct CertStore {
    cert_file: PathBuf,
    key_file: PathBuf,
    provider: Arc<CryptoProvider>,
    current: ArcSwap<CertifiedKey>,
}

impl fmt::Debug for CertStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertStore")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl CertStore {
    /// Loads the certificate chain and key, failing if either file is unreadable, not PEM,
    /// or if the key does not belong to the certificate.
    pub fn load(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<Self>> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let certified = load_certified_key(cert_file, key_file, &provider)?;
        Ok(Arc::new(Self {
            cert_file: cert_file.to_path_buf(),
            key_file: key_file.to_path_buf(),
            provider,
            current: ArcSwap::from_pointee(certified),
        }))
    }

    /// Re-reads both files and serves the new certificate to new connections. Returns
    /// whether the certificate chain changed. On failure the current certificate stays.
    pub fn reload(&self) -> anyhow::Result<bool> {
        let certified = load_certified_key(&self.cert_file, &self.key_file, &self.provider)?;
        let changed = self.current.load().cert != certified.cert;
        self.current.store(Arc::new(certified));
        Ok(changed)
    }

    /// Returns the certificate and key files.
    pub fn files(&self) -> [&Path; 2] {
        [&self.cert_file, &self.key_file]
    }

    /// Builds the rustls server config that resolves every handshake through this store.
    /// ALPN offers HTTP/2 and HTTP/1.1, which the server both speaks.
    pub fn server_config(self: &Arc<Self>) -> anyhow::Result<Arc<ServerConfig>> {
        let mut config = ServerConfig::builder_with_provider(self.provider.clone())
            .with_safe_default_protocol_versions()
            .context("while choosing the TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

fn load_certified_key(
    cert_file: &Path,
    key_file: &Path,
    provider: &CryptoProvider,
) -> anyhow::Result<CertifiedKey> {
    let chain = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| {
            format!(
                "cannot read a PEM certificate from tls.cert_file {}; check the path and \
                 that the file holds a BEGIN CERTIFICATE block",
                cert_file.display()
            )
        })?;
    if chain.is_empty() {
        anyhow::bail!(
            "tls.cert_file {} contains no certificate; add a BEGIN CERTIFICATE block",
            cert_file.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
        format!(
            "cannot read a PEM private key from tls.key_file {}; check the path and that \
             the file holds a BEGIN PRIVATE KEY block",
            key_file.display()
        )
    })?;
    let certified = CertifiedKey::from_der(chain, key, provider).with_context(|| {
        format!(
            "the key in tls.key_file {} does not match the certificate in tls.cert_file {}, \
             or its type is not supported; replace both files from the same issue",
            key_file.display(),
            cert_file.display()
        )
    })?;
    Ok(certified)
}

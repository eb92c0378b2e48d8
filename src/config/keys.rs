//! API keys of one config snapshot, stored as SHA-256 digests and compared in constant time.

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::model::{Config, Role};
use super::secret::Secret;

/// Name given to the key set by the single `api_key` setting.
pub const SINGLE_KEY_NAME: &str = "default";
/// Name given to the key generated when none is configured.
pub const GENERATED_KEY_NAME: &str = "generated";

/// Identity of a request: the name and role of the key it carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Key name from the config; never the key itself.
    pub name: String,
    /// Permissions of the key.
    pub role: Role,
}

#[derive(Clone)]
struct KeyEntry {
    digest: [u8; 32],
    caller: Caller,
}

/// The keys accepted by one snapshot.
#[derive(Clone, Default)]
pub struct KeyTable {
    entries: Vec<KeyEntry>,
}

impl std::fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .entries
            .iter()
            .map(|e| e.caller.name.as_str())
            .collect();
        f.debug_struct("KeyTable").field("names", &names).finish()
    }
}

impl KeyTable {
    /// Builds the table from a validated config, or from `generated` when it has no keys.
    pub fn build(config: &Config, generated: Option<&Secret>) -> Self {
        let mut entries = Vec::new();
        if let Some(key) = &config.api_key {
            entries.push(KeyEntry {
                digest: sha256(key.expose()),
                caller: Caller {
                    name: SINGLE_KEY_NAME.to_owned(),
                    role: Role::Admin,
                },
            });
        }
        for entry in &config.api_keys {
            let digest = match (&entry.key, &entry.key_sha256) {
                (Some(key), _) => sha256(key.expose()),
                (None, Some(hex_digest)) => decode_digest(hex_digest.expose()),
                // Validation rejects entries with neither, so this one is never accepted.
                (None, None) => continue,
            };
            entries.push(KeyEntry {
                digest,
                caller: Caller {
                    name: entry.name.clone(),
                    role: entry.role,
                },
            });
        }
        if entries.is_empty()
            && let Some(key) = generated
        {
            entries.push(KeyEntry {
                digest: sha256(key.expose()),
                caller: Caller {
                    name: GENERATED_KEY_NAME.to_owned(),
                    role: Role::Admin,
                },
            });
        }
        Self { entries }
    }

    /// Returns the caller whose key is `presented`, or `None`.
    ///
    /// Every entry is compared, in constant time, whether or not an earlier one matched, so
    /// the response time does not reveal which key or how much of it was right.
    pub fn authenticate(&self, presented: &str) -> Option<Caller> {
        // Validation rejects a configured digest of the empty key, and this check keeps an
        // empty header from matching one all the same.
        if presented.is_empty() {
            return None;
        }
        let digest = sha256(presented);
        let mut found = None;
        for entry in &self.entries {
            if bool::from(entry.digest.ct_eq(&digest)) {
                found = Some(entry.caller.clone());
            }
        }
        found
    }

    /// Number of keys accepted.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Returns whether no key is accepted.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Generates a random 256-bit key, hex encoded.
pub fn generate_key() -> Secret {
    let mut bytes = [0_u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret::new(hex::encode(bytes))
}

pub(super) fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// Decodes a digest that validation already checked to be 64 hex digits.
pub(super) fn decode_digest(hex_digest: &str) -> [u8; 32] {
    let mut digest = [0_u8; 32];
    // A malformed digest stays all zeros, which no key hashes to in practice.
    let _ = hex::decode_to_slice(hex_digest, &mut digest);
    digest
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::ApiKeyConfig;

    fn config_with_keys() -> Config {
        Config {
            api_key: Some(Secret::new("admin-key-0123456789")),
            api_keys: vec![
                ApiKeyConfig {
                    name: "alice".to_owned(),
                    key: Some(Secret::new("alice-key-0123456789")),
                    key_sha256: None,
                    role: Role::User,
                    requests_per_minute: None,
                    burst: None,
                    max_concurrent_turns: None,
                },
                ApiKeyConfig {
                    name: "bob".to_owned(),
                    key: None,
                    key_sha256: Some(Secret::new(hex::encode(sha256("bob-key-0123456789")))),
                    role: Role::Admin,
                    requests_per_minute: None,
                    burst: None,
                    max_concurrent_turns: None,
                },
            ],
            ..Config::default()
        }
    }

    #[test]
    fn each_key_maps_to_its_caller() {
        let table = KeyTable::build(&config_with_keys(), None);
        let name_of = |key: &str| table.authenticate(key).map(|caller| caller.name);
        assert_eq!(
            name_of("admin-key-0123456789").as_deref(),
            Some(SINGLE_KEY_NAME)
        );
        assert_eq!(name_of("alice-key-0123456789").as_deref(), Some("alice"));
        assert_eq!(name_of("bob-key-0123456789").as_deref(), Some("bob"));
        assert_eq!(name_of("alice-key-012345678"), None);
        assert_eq!(name_of(""), None);
    }

    #[test]
    fn empty_key_is_never_accepted() {
        let mut config = config_with_keys();
        config.api_keys[0].key = None;
        config.api_keys[0].key_sha256 = Some(Secret::new(hex::encode(sha256(""))));
        let table = KeyTable::build(&config, None);
        assert!(table.authenticate("").is_none());
    }

    #[test]
    fn generated_key_applies_only_without_configured_keys() {
        let generated = generate_key();
        let empty = KeyTable::build(&Config::default(), Some(&generated));
        assert!(empty.authenticate(generated.expose()).is_some());
        let configured = KeyTable::build(&config_with_keys(), Some(&generated));
        assert!(configured.authenticate(generated.expose()).is_none());
    }
}

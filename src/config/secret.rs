//! Values that must never reach a log line, an HTTP response or `check-config` output.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What a secret prints as wherever it is formatted or serialized.
pub const REDACTED: &str = "[redacted]";

/// A credential such as an API key or a header value.
///
/// `Debug`, `Display` and `Serialize` all print [`REDACTED`]; only [`Secret::expose`] gives the
/// value, so every use of the real value is visible in the code.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a credential.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the credential itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(REDACTED)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// A database URL whose password, if any, is redacted when printed.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// Returns the URL with its password.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Returns the URL with any password replaced by [`REDACTED`].
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut parsed) if parsed.password().is_some() => {
                // Setting a password fails only for URLs that cannot have one.
                let _ = parsed.set_password(Some(REDACTED));
                parsed.to_string()
            }
            Ok(_) => self.0.clone(),
            // An unparsable URL might still contain a password, so print none of it.
            Err(_) => REDACTED.to_owned(),
        }
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for DatabaseUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for DatabaseUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let secret = Secret::new("sk-live-123");
        assert_eq!(format!("{secret}"), REDACTED);
        assert_eq!(format!("{secret:?}"), REDACTED);
        let json = serde_json::to_string(&secret).unwrap_or_default();
        assert!(!json.contains("sk-live"), "serialized as {json}");
    }

    #[test]
    fn database_url_hides_password_only() {
        let url = DatabaseUrl::new("postgres://goose:hunter2@127.0.0.1:5432/test");
        let shown = url.redacted();
        assert!(!shown.contains("hunter2"), "shown as {shown}");
        assert!(shown.contains("goose@127.0.0.1:5432/test") || shown.contains("goose:"));
        assert_eq!(
            DatabaseUrl::new("sqlite://data/x.db").redacted(),
            "sqlite://data/x.db"
        );
    }
}

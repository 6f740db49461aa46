//! Secret values: never printed, logged or serialised in clear, and read from files.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// Text shown in place of a secret.
pub const REDACTED: &str = "<redacted>";

/// A secret string (password, key passphrase). `Debug`, `Display` and `Serialize` show
/// [`REDACTED`]; only [`Secret::expose`] gives the value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    /// The clear value, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }
    /// True when no value was given.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "\"\"" } else { REDACTED })
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(if self.0.is_empty() { "" } else { REDACTED })
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Self)
    }
}

/// A secret file that could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{key} = {path}: cannot read secret file: {source}")]
pub struct SecretFileError {
    /// The config key naming the file, e.g. `kafka.sasl_password_file`.
    pub key: String,
    /// The file's path.
    pub path: String,
    /// Why it could not be read.
    pub source: std::io::Error,
}

/// The secret's value: from its file (trimmed) when one is configured, else inline.
pub fn read_secret(
    file_key: &str,
    inline: &Secret,
    file: &Option<String>,
) -> Result<String, SecretFileError> {
    match file {
        Some(path) => std::fs::read_to_string(path)
            .map(|s| s.trim().to_string())
            .map_err(|source| SecretFileError {
                key: file_key.to_string(),
                path: path.clone(),
                source,
            }),
        None => Ok(inline.expose().to_string()),
    }
}

/// Replaces the password of a `scheme://user:password@host` URI with [`REDACTED`].
pub fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return uri.to_string();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split(':').next().unwrap_or_default();
    format!(
        "{}{}:{}{}",
        &uri[..scheme_end + 3],
        user,
        REDACTED,
        &rest[at..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_shows() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"<redacted>\"");
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn uri_password_is_masked() {
        assert_eq!(
            redact_uri("mongodb://app:s3cr%40t@db1:27017,db2/?tls=true"),
            "mongodb://app:<redacted>@db1:27017,db2/?tls=true"
        );
        assert_eq!(
            redact_uri("mongodb://127.0.0.1:27017"),
            "mongodb://127.0.0.1:27017"
        );
    }
}

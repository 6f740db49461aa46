//! `[kafka]`: how to reach the cluster and authenticate; every Kafka client specflow makes
//! (the source, the sinks, the checkpoint reader and the admin client) starts from
//! [`KafkaConfig::client_config`].

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use super::BuildError;
use crate::secret::{Secret, read_secret};
use crate::validation::Problem;

/// `kafka.security_protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No TLS, no SASL.
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }
    fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

/// `kafka.sasl_mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SaslMechanism {
    /// Username and password in clear (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// SCRAM with SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM with SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    fn librdkafka(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

/// Connection and security settings for every Kafka client specflow makes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// `client.id` reported to the brokers.
    pub client_id: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    pub security_protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` (with a `sasl_*` protocol).
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL username.
    pub sasl_username: String,
    /// SASL password (prefer `sasl_password_file` or the environment).
    pub sasl_password: Secret,
    /// File whose contents (trimmed) are the SASL password.
    pub sasl_password_file: Option<String>,
    /// CA bundle (PEM) to verify the brokers.
    pub ssl_ca_location: Option<String>,
    /// Client certificate (PEM) for mutual TLS.
    pub ssl_certificate_location: Option<String>,
    /// Client private key (PEM) for mutual TLS.
    pub ssl_key_location: Option<String>,
    /// Passphrase of the client key.
    pub ssl_key_password: Secret,
    /// File whose contents (trimmed) are the key passphrase.
    pub ssl_key_password_file: Option<String>,
    /// Extra librdkafka properties for the consumer, e.g. `"fetch.max.bytes" = "1048576"`.
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producers, e.g. `"compression.type" = "lz4"`.
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            client_id: "specflow".into(),
            security_protocol: SecurityProtocol::Plaintext,
            sasl_mechanism: None,
            sasl_username: String::new(),
            sasl_password: Secret::default(),
            sasl_password_file: None,
            ssl_ca_location: None,
            ssl_certificate_location: None,
            ssl_key_location: None,
            ssl_key_password: Secret::default(),
            ssl_key_password_file: None,
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

impl KafkaConfig {
    /// Every problem with these settings.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        if self.brokers.trim().is_empty() {
            problems.push(Problem::new(
                "kafka.brokers",
                "\"\"",
                "must name at least one host:port",
            ));
        }
        if self.security_protocol.uses_sasl() {
            if self.sasl_mechanism.is_none() {
                problems.push(Problem::new(
                    "kafka.sasl_mechanism",
                    "(unset)",
                    "required with a sasl_* security_protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
                ));
            }
            if self.sasl_username.is_empty() {
                problems.push(Problem::new(
                    "kafka.sasl_username",
                    "\"\"",
                    "required with a sasl_* security_protocol",
                ));
            }
            if self.sasl_password.is_empty() && self.sasl_password_file.is_none() {
                problems.push(Problem::new(
                    "kafka.sasl_password",
                    "\"\"",
                    "required with a sasl_* security_protocol (or set kafka.sasl_password_file)",
                ));
            }
        } else if self.sasl_mechanism.is_some() {
            problems.push(Problem::new(
                "kafka.sasl_mechanism",
                format!("{:?}", self.sasl_mechanism),
                "only used with security_protocol sasl_plaintext or sasl_ssl",
            ));
        }
        for (key, file) in [
            ("kafka.sasl_password_file", &self.sasl_password_file),
            ("kafka.ssl_key_password_file", &self.ssl_key_password_file),
            ("kafka.ssl_ca_location", &self.ssl_ca_location),
            (
                "kafka.ssl_certificate_location",
                &self.ssl_certificate_location,
            ),
            ("kafka.ssl_key_location", &self.ssl_key_location),
        ] {
            if let Some(path) = file
                && std::fs::metadata(path).is_err()
            {
                problems.push(Problem::new(
                    key,
                    path,
                    "file does not exist or is not readable",
                ));
            }
        }
        for (section, props) in [
            ("kafka.consumer", &self.consumer),
            ("kafka.producer", &self.producer),
        ] {
            for (key, value) in props {
                if RESERVED.contains(&key.as_str()) {
                    problems.push(Problem::new(
                        format!("{section}.\"{key}\""),
                        value,
                        "is set by specflow itself (see [kafka], [source] and [output])",
                    ));
                }
            }
        }
        for (key, value) in &self.producer {
            if let Some(why) = super::producer::weakened_guarantee(key, value) {
                problems.push(Problem::new(
                    format!("kafka.producer.\"{key}\""),
                    value,
                    why,
                ));
            }
        }
        problems
    }

    /// A librdkafka config with the connection, security and `extra` properties set.
    /// Reads `*_file` secrets; the error names the key whose file could not be read.
    pub fn client_config(
        &self,
        extra: &BTreeMap<String, String>,
    ) -> Result<ClientConfig, BuildError> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("security.protocol", self.security_protocol.librdkafka());
        if let Some(mechanism) = self.sasl_mechanism {
            config.set("sasl.mechanism", mechanism.librdkafka());
        }
        if !self.sasl_username.is_empty() {
            config.set("sasl.username", &self.sasl_username);
        }
        let password = read_secret(
            "kafka.sasl_password_file",
            &self.sasl_password,
            &self.sasl_password_file,
        )?;
        if !password.is_empty() {
            config.set("sasl.password", password);
        }
        for (key, value) in [
            ("ssl.ca.location", &self.ssl_ca_location),
            ("ssl.certificate.location", &self.ssl_certificate_location),
            ("ssl.key.location", &self.ssl_key_location),
        ] {
            if let Some(value) = value {
                config.set(key, value);
            }
        }
        let key_password = read_secret(
            "kafka.ssl_key_password_file",
            &self.ssl_key_password,
            &self.ssl_key_password_file,
        )?;
        if !key_password.is_empty() {
            config.set("ssl.key.password", key_password);
        }
        for (key, value) in extra {
            config.set(key, value);
        }
        Ok(config)
    }
}

/// librdkafka properties specflow sets itself and that pass-through maps may not override.
const RESERVED: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "enable.auto.offset.store",
    "enable.partition.eof",
    "sasl.password",
    "ssl.key.password",
];

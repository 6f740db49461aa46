//! The settings tree: embedded defaults → TOML file → `SPECFLOW__SECTION__KEY` environment.
//!
//! Every section is owned by the module that uses it (`[source]` by
//! [`crate::sources::kafka`], `[mongo]` by [`crate::sinks::mongo`], …); this module only
//! assembles them, loads them, and collects every validation problem at once.

use serde::{Deserialize, Serialize};
use std::path::Path;

use crate::audio::InputConfig;
use crate::dsp::DspConfig;
use crate::gateway::config::GatewayConfig;
use crate::kafka::KafkaConfig;
use crate::pipeline::state::config::{CheckpointConfig, StreamsConfig};
use crate::secret;
use crate::sinks::dead_letter::DeadLetterConfig;
use crate::sinks::kafka::KafkaSinkConfig;
use crate::sinks::mongo::MongoSinkConfig;
use crate::sources::kafka::KafkaSourceConfig;
use crate::telemetry::LogConfig;
use crate::telemetry::http::HttpConfig;
use crate::validation::Problem;

/// Prefix of environment overrides: `SPECFLOW__DSP__HOP_LENGTH=256`.
pub const ENV_PREFIX: &str = "SPECFLOW";
/// Where packaged deployments keep the config file.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/specflow/specflow.toml";

/// The whole configuration of a specflow process.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    /// `[kafka]`: cluster connection and security.
    pub kafka: KafkaConfig,
    /// `[source]`: the input topic and consumer group.
    pub source: KafkaSourceConfig,
    /// `[input]`: defaults for absent audio headers and input limits.
    pub input: InputConfig,
    /// `[dsp]`: frame parameters and the feature selection.
    pub dsp: DspConfig,
    /// `[streams]`: per-stream state limits.
    pub streams: StreamsConfig,
    /// `[checkpoint]`: the compacted topic that restores stream state after a restart.
    pub checkpoint: CheckpointConfig,
    /// `[output]`: the feature-record topic.
    pub output: KafkaSinkConfig,
    /// `[dead_letter]`: where malformed messages go.
    pub dead_letter: DeadLetterConfig,
    /// `[mongo]`: the MongoDB store.
    pub mongo: MongoSinkConfig,
    /// `[http]`: metrics and health endpoint.
    pub http: HttpConfig,
    /// `[gateway]`: the HTTP front door (`specflow gateway`).
    pub gateway: GatewayConfig,
    /// `[log]`: log level and format.
    pub log: LogConfig,
    /// `[runtime]`: threads.
    pub runtime: RuntimeConfig,
    /// `[shutdown]`: drain deadline.
    pub shutdown: ShutdownConfig,
}

/// `[runtime]`: how much of the machine to use.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads for feature computation; 0 = one per core.
    pub worker_threads: usize,
}

impl RuntimeConfig {
    /// The thread count to use (resolves 0 to the CPUs available). Resolving 0 reads the
    /// process's cgroup CPU quota from several files, so call it once at start-up, not per
    /// batch.
    pub fn effective_worker_threads(&self) -> usize {
        if self.worker_threads == 0 {
            std::thread::available_parallelism().map_or(1, usize::from)
        } else {
            self.worker_threads
        }
    }
}

/// `[shutdown]`: how a stop request is honoured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Seconds allowed, after SIGTERM/SIGINT, to finish in-flight work, flush and commit.
    pub drain_timeout_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_timeout_secs: 30,
        }
    }
}

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file is missing, not TOML, has an unknown key or a value of the wrong type.
    #[error("{0}")]
    Load(#[from] config::ConfigError),
    /// The settings parsed but some values are invalid.
    #[error("{} invalid setting(s):\n{}", .0.len(), .0.iter().map(|p| format!("  {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid(Vec<Problem>),
}

impl Settings {
    /// Loads defaults, then `path` (when given), then the environment, without validating.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(
                config::File::from(path)
                    .format(config::FileFormat::Toml)
                    .required(true),
            );
        }
        let env: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(env)),
        );
        Ok(builder.build()?.try_deserialize()?)
    }

    /// Loads and validates; the error lists every problem.
    pub fn load_valid(path: Option<&Path>) -> Result<Self, ConfigError> {
        let settings = Self::load(path)?;
        let problems = settings.validate();
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    }

    /// The checkpoint topic in effect (`checkpoint.topic`, or `<source.group_id>.checkpoints`).
    pub fn checkpoint_topic(&self) -> String {
        self.checkpoint.topic_for(&self.source.group_id)
    }

    /// The output producer's `transactional.id` (`output.transactional_id`, or one derived
    /// from the group and the instance), or `None` unless `output.exactly_once` is on.
    pub fn transactional_id(&self) -> Option<String> {
        if !self.output.exactly_once {
            return None;
        }
        if !self.output.transactional_id.is_empty() {
            return Some(self.output.transactional_id.clone());
        }
        let group = &self.source.group_id;
        Some(if self.source.instance_id.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .or_else(|| std::env::var("HOSTNAME").ok())
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "host".into());
            format!("specflow-{group}-{host}-{}", std::process::id())
        } else {
            format!("specflow-{group}-{}", self.source.instance_id)
        })
    }

    /// Every problem in the settings, each naming its key.
    pub fn validate(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        problems.extend(self.kafka.validate());
        problems.extend(self.source.validate());
        problems.extend(self.input.validate());
        if self.input.sample_rate > 0 {
            problems.extend(self.dsp.validate_for_rate(self.input.sample_rate));
        } else {
            problems.extend(self.dsp.validate());
        }
        problems.extend(self.streams.validate());
        problems.extend(self.checkpoint.validate(&self.source.group_id));
        problems.extend(self.output.validate());
        problems.extend(self.dead_letter.validate());
        problems.extend(self.mongo.validate());
        problems.extend(self.http.validate());
        problems.extend(self.gateway.validate());
        problems.extend(self.log.validate());
        if self.shutdown.drain_timeout_secs == 0 {
            problems.push(Problem::new(
                "shutdown.drain_timeout_secs",
                0,
                "must be at least 1",
            ));
        }
        if !self.output.enabled && !self.mongo.enabled {
            problems.push(Problem::new(
                "output.enabled",
                false,
                "at least one sink must be on: output.enabled or mongo.enabled",
            ));
        }
        for (key, topic) in [
            ("output.topic", &self.output.topic),
            ("dead_letter.topic", &self.dead_letter.topic),
            ("checkpoint.topic", &self.checkpoint_topic()),
        ] {
            if *topic == self.source.topic {
                problems.push(Problem::new(key, topic, "must differ from source.topic"));
            }
        }
        if self.output.exactly_once {
            problems.extend(self.exactly_once_problems());
        }
        for (key, topic) in [
            ("output.topic", &self.output.topic),
            ("dead_letter.topic", &self.dead_letter.topic),
        ] {
            if *topic == self.checkpoint_topic() {
                problems.push(Problem::new(
                    key,
                    topic,
                    "must differ from checkpoint.topic",
                ));
            }
        }
        problems
    }

    /// What `output.exactly_once` cannot work with: client properties that would let the
    /// consumer commit on its own or read uncommitted records, or set the transaction by hand.
    fn exactly_once_problems(&self) -> Vec<Problem> {
        let mut problems = Vec::new();
        let consumer = |key: &str| self.kafka.consumer.get(key).map(|v| v.trim().to_string());
        if let Some(level) = consumer("isolation.level")
            && level != "read_committed"
        {
            problems.push(Problem::new(
                "kafka.consumer.\"isolation.level\"",
                &level,
                "must be read_committed (or unset) with output.exactly_once: a worker must never restore or replay records of an aborted transaction",
            ));
        }
        if let Some(auto) = consumer("enable.auto.commit")
            && !auto.eq_ignore_ascii_case("false")
        {
            problems.push(Problem::new(
                "kafka.consumer.\"enable.auto.commit\"",
                &auto,
                "must be false (or unset) with output.exactly_once: offsets are committed inside each batch's transaction",
            ));
        }
        for key in ["transactional.id", "transaction.timeout.ms"] {
            if let Some(value) = self.kafka.producer.get(key) {
                let own = if key == "transactional.id" {
                    "output.transactional_id"
                } else {
                    "output.transaction_timeout_ms"
                };
                problems.push(Problem::new(
                    format!("kafka.producer.\"{key}\""),
                    value,
                    format!("is set by specflow in exactly-once mode: use {own}"),
                ));
            }
        }
        problems
    }

    /// The effective settings as TOML, secrets redacted (for `specflow check --print`).
    pub fn to_redacted_toml(&self) -> String {
        let mut shown = self.clone();
        shown.mongo.uri = secret::redact_uri(&shown.mongo.uri);
        toml::to_string_pretty(&shown)
            .unwrap_or_else(|e| format!("# cannot render settings: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn defaults_are_valid() {
        let settings = Settings::load_with_env(None, no_env()).unwrap();
        assert_eq!(settings, Settings::default());
        assert_eq!(settings.validate(), Vec::<Problem>::new());
    }

    #[test]
    fn shipped_config_file_equals_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/specflow.toml");
        let settings = Settings::load_with_env(Some(&path), no_env()).unwrap();
        assert_eq!(
            settings,
            Settings::default(),
            "configs/specflow.toml must show every default"
        );
    }

    #[test]
    fn unknown_enum_values_name_their_key() {
        for (text, key, value) in [
            (
                "[output]\ncompression = \"brotli\"\n",
                "output.compression",
                "brotli",
            ),
            (
                "[source]\nauto_offset_reset = \"newest\"\n",
                "source.auto_offset_reset",
                "newest",
            ),
        ] {
            let f = file(text);
            let err = Settings::load_with_env(Some(f.path()), no_env())
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains(value), "{err}");
        }
        let err = Settings::load_with_env(
            None,
            vec![(
                "SPECFLOW__OUTPUT__COMPRESSION".to_string(),
                "brotli".to_string(),
            )],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("output.compression") && err.contains("brotli"),
            "{err}"
        );
    }

    #[test]
    fn file_then_env_override() {
        let f = file("[dsp]\nhop_length = 256\n[kafka.producer]\n\"compression.type\" = \"lz4\"\n");
        let env = vec![
            (
                "SPECFLOW__DSP__FRAME_LENGTH".to_string(),
                "1024".to_string(),
            ),
            ("SPECFLOW__SOURCE__TOPIC".to_string(), "mics".to_string()),
        ];
        let settings = Settings::load_with_env(Some(f.path()), env).unwrap();
        assert_eq!(settings.dsp.hop_length, 256);
        assert_eq!(settings.dsp.frame_length, 1024);
        assert_eq!(settings.source.topic, "mics");
        assert_eq!(
            settings
                .kafka
                .producer
                .get("compression.type")
                .map(String::as_str),
            Some("lz4")
        );
    }

    #[test]
    fn unknown_keys_are_errors() {
        let f = file("[dsp]\nhop_lenght = 256\n");
        let err = Settings::load_with_env(Some(f.path()), no_env())
            .unwrap_err()
            .to_string();
        assert!(err.contains("hop_lenght"), "{err}");
        let env = vec![("SPECFLOW__NOPE__X".to_string(), "1".to_string())];
        let err = Settings::load_with_env(None, env).unwrap_err().to_string();
        assert!(err.contains("nope"), "{err}");
    }

    /// The problems `validate` lists for a config file of `text`, as printed.
    fn problems_of(text: &str) -> Vec<String> {
        let f = file(text);
        let settings = Settings::load_with_env(Some(f.path()), no_env()).unwrap();
        settings
            .validate()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    /// Asserts that `problem` is one of `problems`.
    fn assert_listed(problems: &[String], problem: &str) {
        assert!(
            problems.iter().any(|p| p == problem),
            "{problem:?} is not listed: {problems:?}"
        );
    }

    /// Asserts that one of `problems` starts with `prefix`.
    fn assert_listed_from(problems: &[String], prefix: &str) {
        assert!(
            problems.iter().any(|p| p.starts_with(prefix)),
            "no problem starts with {prefix:?}: {problems:?}"
        );
    }

    #[test]
    fn every_problem_is_listed_with_its_key() {
        let problems = problems_of(
            "[dsp]\nhop_length = 0\n[input]\nsample_rate = 0\n[output]\ntopic = \"audio.raw\"\n",
        );
        assert_listed(
            &problems,
            "dsp.hop_length = 0: must be between 1 and frame_length",
        );
        assert_listed_from(&problems, "input.sample_rate = 0:");
        assert_listed(
            &problems,
            "output.topic = audio.raw: must differ from source.topic",
        );
    }

    #[test]
    fn unknown_feature_is_listed_with_every_other_problem() {
        let problems = problems_of("[dsp]\nfeatures = [\"rms\", \"loudness\"]\nhop_length = 0\n");
        assert_listed_from(
            &problems,
            "dsp.features = loudness: unknown feature; expected \"all\" or one of rms, zcr, ",
        );
        assert_listed(
            &problems,
            "dsp.hop_length = 0: must be between 1 and frame_length",
        );
    }

    #[test]
    fn redacted_print_hides_secrets() {
        let mut settings = Settings::default();
        settings.kafka.sasl_password = secret::Secret::new("kafka-pw-123");
        settings.kafka.ssl_key_password = secret::Secret::new("key-pw-456");
        settings.mongo.uri = "mongodb://app:mongo-pw-789@db:27017".into();
        let shown = settings.to_redacted_toml();
        for secret in ["kafka-pw-123", "key-pw-456", "mongo-pw-789"] {
            assert!(!shown.contains(secret), "{secret} leaked:\n{shown}");
        }
        assert!(shown.contains("mongodb://app:<redacted>@db:27017"));
        assert!(!format!("{settings:?}").contains("kafka-pw-123"));
    }
}

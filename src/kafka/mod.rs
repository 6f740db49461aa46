//! Kafka client settings shared by every Kafka client specflow makes: the connection and
//! security config ([`KafkaConfig`], `[kafka]`), topic names and topic creation ([`topics`]),
//! broker reachability as a producer sees it ([`reachability`]), the producer with
//! awaitable deliveries every specflow producer is ([`producer`]), and clients whose close
//! never blocks their owner ([`closing`]).
//!
//! A leaf module: the source, the sinks and the checkpoint topic build their clients from it,
//! and it knows none of them (nor the settings tree).

pub mod client;
pub mod closing;
pub mod producer;
pub mod reachability;
pub mod topics;

pub use client::{KafkaConfig, SaslMechanism, SecurityProtocol};
pub use topics::valid_topic_name;

use crate::secret::SecretFileError;

/// Why a Kafka client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A `*_file` secret could not be read.
    #[error(transparent)]
    Secret(#[from] SecretFileError),
    /// librdkafka refused the configuration.
    #[error("cannot create the Kafka {client} for {brokers}: {source}")]
    Client {
        /// Which client: `consumer`, `producer`, `admin client`.
        client: &'static str,
        /// `kafka.brokers`.
        brokers: String,
        /// librdkafka's error.
        source: rdkafka::error::KafkaError,
    },
}

impl KafkaConfig {
    /// Creates a client of type `T` from `config`; the error says which client and brokers.
    pub fn create<T: rdkafka::config::FromClientConfig>(
        &self,
        client: &'static str,
        config: &rdkafka::ClientConfig,
    ) -> Result<T, BuildError> {
        config
            .create()
            .map_err(|source| self.client_error(client, source))
    }

    /// Like [`KafkaConfig::create`] for a client with a custom context.
    pub fn create_with_context<C, T>(
        &self,
        client: &'static str,
        config: &rdkafka::ClientConfig,
        context: C,
    ) -> Result<T, BuildError>
    where
        C: rdkafka::ClientContext,
        T: rdkafka::config::FromClientConfigAndContext<C>,
    {
        config
            .create_with_context(context)
            .map_err(|source| self.client_error(client, source))
    }

    /// The error of a `client` that could not be made: which client, which brokers, and why.
    pub fn client_error(
        &self,
        client: &'static str,
        source: rdkafka::error::KafkaError,
    ) -> BuildError {
        BuildError::Client {
            client,
            brokers: self.brokers.clone(),
            source,
        }
    }
}

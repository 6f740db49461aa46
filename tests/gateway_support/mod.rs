//! Shared by the gateway's integration tests (`gateway_ingest`, `gateway_ws`, `gateway_api`,
//! `gateway_live`, `gateway_page`): a gateway bound in-process on a free port
//! ([`RunningGateway`]), the settings of one test ([`setup`]), the lock that keeps the broker
//! outage test alone, and small helpers for raw-PCM queries, the input topic and the frames
//! MongoDB holds; [`browser`] drives headless Chromium (`gateway_page`).
// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod browser;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

use specflow::config::Settings;
use specflow_test_support::chunks::EPOCH_MS;
use specflow_test_support::framing::Framing;
use specflow_test_support::testing::{self as common, Names, brokers, create_topics};

/// The outage test stops the broker: it runs alone, the others side by side (within one test
/// crate; cargo runs the test crates one after another).
pub static SERVICES: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// Sample rate of the tests' audio, in Hz.
pub const RATE: u32 = 16_000;

/// A gateway serving in a task of the test's runtime, until [`RunningGateway::stop`].
pub struct RunningGateway {
    /// The bound address (`127.0.0.1`, a free port).
    pub address: SocketAddr,
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningGateway {
    /// Binds a gateway with `settings` on a free loopback port and serves it.
    pub async fn start(settings: &Settings) -> Self {
        let mut settings = settings.clone();
        settings.gateway.address = "127.0.0.1:0".into();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let (address, server) =
            specflow::gateway::bind(settings, async move { token.cancelled().await })
                .await
                .expect("gateway binds");
        Self {
            address,
            stop,
            handle: tokio::spawn(server),
        }
    }

    /// `http://ADDRESS{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// Stops the gateway and waits for it to exit cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("gateway stops within 30 s")
            .expect("gateway task")
            .expect("gateway exits cleanly");
    }
}

/// Settings for one test: the local services, fresh names, splitting at 1,600 samples.
pub async fn setup(test: &str) -> (Names, Settings) {
    let names = Names::new(test);
    create_topics(&names, 2).await;
    let mut settings = common::settings(&names);
    settings.gateway.max_chunk_bytes = 3_200;
    (names, settings)
}

/// The query of a raw mono `s16le` body at `start` (its timestamp from [`EPOCH_MS`]).
pub fn raw_query(start: u64, eos: bool) -> Vec<(&'static str, String)> {
    vec![
        ("format", "s16le".into()),
        ("sample_rate", RATE.to_string()),
        ("channels", "1".into()),
        ("start_sample", start.to_string()),
        (
            "timestamp_ms",
            (EPOCH_MS + start as i64 * 1000 / i64::from(RATE)).to_string(),
        ),
        ("eos", u8::from(eos).to_string()),
    ]
}

/// Sum of the end offsets of `topic`'s partitions: how many messages it ever received. A topic
/// created a moment ago may not be in every broker's metadata yet (`UnknownPartition`): asked
/// again for up to 30 s.
pub async fn messages_in(topic: &str, partitions: i32) -> i64 {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .create()
        .expect("consumer");
    let mut total = 0;
    let mut unknown = String::new();
    let known = common::eventually(Duration::from_secs(30), async || {
        total = 0;
        for p in 0..partitions {
            // A blocking metadata request (up to 10 s): the runtime's other tasks go on.
            let asked = tokio::task::block_in_place(|| {
                consumer.fetch_watermarks(topic, p, Duration::from_secs(10))
            });
            match asked {
                Ok((_, high)) => total += high,
                Err(e) => {
                    unknown = format!("watermarks of {topic}/{p}: {e}");
                    eprintln!("{unknown}; asking again");
                    return false;
                }
            }
        }
        true
    })
    .await;
    assert!(known, "{unknown}");
    total
}

/// Frames the worker computes for a whole stream of `samples`.
pub fn all_frames(framing: &Framing, samples: usize) -> i64 {
    framing.complete(samples as u64) as i64
}

/// Waits until MongoDB holds frames and their count has not moved for 2 s; returns the count.
pub async fn settled_frames(collection: &mongodb::Collection<mongodb::bson::Document>) -> i64 {
    let mut count = 0;
    let settled = common::eventually(Duration::from_secs(90), async || {
        count = common::stored_frames(collection).await;
        let now = count;
        now > 0
            && common::holds_for(Duration::from_secs(2), async || {
                common::stored_frames(collection).await == now
            })
            .await
    })
    .await;
    assert!(settled, "frames never settled in MongoDB ({count})");
    count
}

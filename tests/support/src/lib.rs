//! Helpers shared by specflow's integration tests and the end-to-end
//! benchmark (`benches/e2e`): everything both need to drive a real worker against real Kafka.
//!
//! # Layout
//! - [`names`]: run names ([`unique`]) and the topics, group and database of one run
//!   ([`Names`]), and topic creation ([`create_topics`]).
//! - [`chunks`]: input messages ([`Chunk`]) cut from PCM with the `audio.*` headers of
//!   [`specflow::audio::headers::ChunkHeaders`], and deterministic test audio.
//! - [`framing`]: the `[dsp]` framing arithmetic: frames each chunk completes, records and
//!   messages a load produces.
//! - [`wav`]: reading WAV files with the library's reader.
//! - [`worker`]: a `specflow run` child process that is killed when dropped.
//! - [`metrics`]: `GET` on the worker's HTTP endpoint and the Prometheus text format, where a
//!   missing metric is an error, not a zero.
//!
//! - [`testing`]: what only the integration tests use, as one prelude: the services' addresses,
//!   settings, producers, the worker in process and as a process, stopped services, polling
//!   ([`testing::eventually`]), and what MongoDB and the output topic hold against an
//!   uninterrupted run. Its helpers panic with a message.
//!
//! Outside [`testing`] nothing depends on a test harness (no panics on I/O errors): fallible
//! helpers return `Result` and the caller decides.

pub mod chunks;
pub mod framing;
pub mod metrics;
pub mod names;
pub mod testing;
pub mod wav;
pub mod worker;

pub use chunks::{Chunk, chunk_stream, fixed_chunks, synthetic_pcm};
pub use framing::{Expect, Framing};
pub use metrics::{MissingMetric, Scrape, http_get};
pub use names::{Names, create_topics, unique};
pub use wav::read_mono_wav;
pub use worker::{Supervised, WorkerProcess};

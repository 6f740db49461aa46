//! specflow: a Kafka consumer-group worker that turns raw PCM audio chunks into frame-level
//! audio features (RMS, ZCR, spectral shape, pitch, mel, MFCC, chroma, …), writes one feature
//! record per input message to an output topic and stores it in MongoDB.
//!
//! # Layout
//! A message's way through the worker, module by module:
//! - [`sources`]: the Kafka consumer, its rebalance hooks and offset commits (`[source]`).
//! - [`pipeline`]: the worker loop, one file per stage: `intake` (a message enters, the pending
//!   batch, the partition tables), `recovery` (restoring an assigned partition), `compute` (the
//!   DSP fan-out), `deliver` (records and dead letters to Kafka), `store` (MongoDB, checkpoints,
//!   then offsets), `backpressure` (pausing and backoff), `batch` (the types the stages hand
//!   each other, so that no stage depends on another), `exactly_once` (`output.exactly_once`:
//!   one Kafka transaction per batch, rewinds after an abort), and `mod.rs` orchestrating them.
//! - [`pipeline::state`]: stream state and its checkpoint: the per-partition stream table
//!   (`streams`: alignment on `audio.start_sample`, gaps, eviction), the checkpoint record and
//!   its value format (`checkpoint`), the compacted checkpoint topic, co-partitioned with the
//!   input (`checkpoint_topic`: restore, writes, checks), and its settings (`config`,
//!   `[checkpoint]`).
//! - [`audio`]: the input wire format: key, `audio.*` headers ([`audio::headers`]), PCM payload
//!   → mono samples; WAV files and WAV bodies ([`audio::wav`]).
//! - [`dsp`]: pure, synchronous feature extraction: window, real FFT, mel/chroma filter banks,
//!   YIN, pYIN, streaming per-stream state. No I/O, no async.
//! - [`record`]: the feature record: its serde view (the definition) and the encoders that
//!   write its JSON (Kafka) and BSON (MongoDB) straight to bytes in one walk (`record::encode`).
//! - [`sinks`]: the output topic and MongoDB, each a config + build, and the dead-letter
//!   topic, which wraps the output topic's sink.
//!
//! - [`gateway`]: `specflow gateway`, the HTTP/WebSocket front door: audio in (produced to
//!   the input topic as the worker's own messages), stored and live features out, a browser
//!   page (`[gateway]`).
//!
//! Shared by all of them:
//! - [`kafka`]: Kafka client settings (`[kafka]`, [`kafka::client`]): connection, security,
//!   topic names and topic creation ([`kafka::topics`]), broker reachability as a producer
//!   sees it ([`kafka::reachability`]), the producer with awaitable deliveries every producer
//!   is ([`kafka::producer`]), and clients whose close never blocks their owner
//!   ([`kafka::closing`]). A leaf: it knows none of its users.
//! - [`secret`]: secret values and secret files.
//! - [`config`]: the settings tree; defaults → TOML file → `SPECFLOW__SECTION__KEY`
//!   environment; validation that lists every problem with its key.
//! - [`validation`]: the config problem type.
//! - [`telemetry`]: logging, Prometheus metrics, `/metrics` `/healthz` `/readyz`, and systemd
//!   notifications ([`telemetry::systemd`]).
//! - [`shutdown`]: stop requests, the drain deadline, the watchdog and the exit codes.
//! - [`clock`]: the Unix-milliseconds wall clock.
//!
//! The commands besides `run` and `gateway` (`check`, `extract`, `produce`, `inspect`,
//! `loadtest`) live in the binary (`src/cli/`), not in this library.

pub mod audio;
pub mod clock;
pub mod config;
pub mod dsp;
pub mod gateway;
pub mod kafka;
pub mod pipeline;
pub mod record;
pub mod secret;
pub mod shutdown;
pub mod sinks;
pub mod sources;
pub mod telemetry;
pub mod validation;

//! specflow: a Kafka consumer-group worker that turns raw PCM audio chunks into frame-level
//! audio features (RMS, ZCR, spectral shape, pitch, mel, MFCC, chroma, …), writes one feature
//! record per input message to an output topic and stores it in MongoDB.
//!
//! # Layout
//! - [`config`]: the settings tree; defaults → TOML file → `SPECFLOW__SECTION__KEY`
//!   environment; validation that lists every problem with its key.
//! - [`audio`]: the input wire format (key, headers, PCM payload → mono samples) and WAV files.
//! - [`dsp`]: pure, synchronous feature extraction: window, real FFT, mel/chroma filter banks,
//!   YIN, streaming per-stream state. No I/O, no async.
//! - [`streams`]: per-partition stream table: alignment on `audio.start_sample`, gaps,
//!   eviction, and the checkpoints each stream's state is restored from.
//! - [`checkpoint`]: the compacted checkpoint topic, co-partitioned with the input: its
//!   record format, the restore of a partition and the topic checks.
//! - [`record`]: the feature record (JSON for Kafka, BSON for MongoDB, one view).
//! - [`sources`]: the Kafka consumer, its rebalance hooks and offset storage.
//! - [`sinks`]: the output topic, the dead-letter topic and MongoDB, each a config + build.
//! - [`pipeline`]: the worker loop: recv → decode → DSP → sinks → checkpoints → offsets.
//! - [`telemetry`]: logging, Prometheus metrics, `/metrics` `/healthz` `/readyz`.
//! - [`shutdown`]: signals and draining.
//! - [`produce`], [`extract`] and [`inspect`]: the load generator, the offline WAV extractor
//!   and a look at what a deployment wrote.

pub mod audio;
pub mod checkpoint;
pub mod config;
pub mod dsp;
pub mod extract;
pub mod inspect;
pub mod kafka;
pub mod pipeline;
pub mod produce;
pub mod record;
pub mod secret;
pub mod shutdown;
pub mod sinks;
pub mod sources;
pub mod streams;
pub mod telemetry;
pub mod validation;

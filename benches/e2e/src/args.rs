//! The command line of `specflow-bench`.

use clap::Parser;
use std::path::PathBuf;

/// Command-line flags of `specflow-bench` (all have defaults that finish in a few minutes on
/// a 2-core machine).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "specflow-bench",
    about = "End-to-end benchmark of specflow against local Kafka and MongoDB",
    args_override_self = true
)]
pub struct Args {
    /// Config file of the worker (Kafka, MongoDB, [dsp]); topics, group, database and HTTP
    /// address are overridden per run.
    #[arg(long, default_value = "configs/specflow.toml")]
    pub config: PathBuf,
    /// The `specflow` binary (default: next to this one).
    #[arg(long)]
    pub specflow: Option<PathBuf>,
    /// `scripts/services.sh`, for Kafka's `ConsumerPerformance`.
    #[arg(long, default_value = "scripts/services.sh")]
    pub services_script: PathBuf,
    /// Directory for worker and producer logs (a subdirectory per run).
    #[arg(long, default_value = "target/bench")]
    pub work_dir: PathBuf,
    /// Write the figures as JSON to this file (default: `bench.json` in the run's log
    /// directory under --work-dir).
    #[arg(long)]
    pub out: Option<PathBuf>,

    /// Throughput: concurrent streams preloaded into the input topic.
    #[arg(long, default_value_t = 20)]
    pub streams: usize,
    /// Throughput: seconds of audio per stream.
    #[arg(long, default_value_t = 20.0)]
    pub seconds: f64,
    /// Chunk (message) duration in milliseconds, for every phase.
    #[arg(long, default_value_t = 100)]
    pub chunk_ms: u64,
    /// Audio: `tone` (440 Hz), `noise`, or `wav:PATH`; 16 kHz s16 mono unless a WAV says
    /// otherwise.
    #[arg(long, default_value = "tone")]
    pub signal: String,
    /// Partitions of every input topic (default: `source.topic_partitions` of the config).
    #[arg(long)]
    pub partitions: Option<i32>,
    /// Give up on a worker run after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub run_timeout: u64,
    /// `/metrics` polling interval while measuring, in milliseconds.
    #[arg(long, default_value_t = 50)]
    pub metrics_poll_ms: u64,

    /// Scaling: comma-separated `runtime.worker_threads` values (default: 1, 2, 4, … up to
    /// and including the number of cores). The value equal to the core count reuses the main
    /// run (`worker_threads = 0` resolves to it).
    #[arg(long)]
    pub threads: Option<String>,
    /// DSP ceilings: passes per variant (the fastest counts).
    #[arg(long, default_value_t = 3)]
    pub repeat: usize,
    /// Skip the scaling runs.
    #[arg(long)]
    pub skip_scaling: bool,
    /// Instance scaling: comma-separated `NxT` layouts, N `specflow run` processes of T
    /// threads each in one consumer group on the same preloaded topic.
    #[arg(long, default_value = "1x2,2x1")]
    pub instances: String,
    /// Skip the instance-scaling runs.
    #[arg(long)]
    pub skip_instances: bool,
    /// Skip Kafka's Java `ConsumerPerformance` ceiling (the rdkafka ceiling still runs).
    #[arg(long)]
    pub skip_java_ceiling: bool,
    /// MongoDB ceiling: documents per `insert_many` (default: `source.batch_max_messages`,
    /// the worker's largest batch).
    #[arg(long)]
    pub mongo_batch: Option<usize>,
    /// MongoDB ceiling: the second, smaller batch size (0: only `--mongo-batch`).
    #[arg(long, default_value_t = 250)]
    pub mongo_batch_small: usize,
    /// MongoDB ceiling: comma-separated counts of concurrent writers to try.
    #[arg(long, default_value = "1,2,4")]
    pub mongo_writers: String,
    /// MongoDB ceiling: insert the first this many of the records (0: all).
    #[arg(long, default_value_t = 2000)]
    pub mongo_docs: usize,

    /// Latency: concurrent real-time streams.
    #[arg(long, default_value_t = 200)]
    pub latency_streams: usize,
    /// Latency: measured seconds (after the warm-up).
    #[arg(long, default_value_t = 20.0)]
    pub latency_seconds: f64,
    /// Latency: warm-up seconds excluded from the figures.
    #[arg(long, default_value_t = 5.0)]
    pub warmup_seconds: f64,
    /// Latency: polling interval in milliseconds of the worker's `/metrics` (MongoDB
    /// acknowledged writes) and of the `_id` lookups.
    #[arg(long, default_value_t = 20)]
    pub poll_ms: u64,
    /// Latency: also look up by `_id` in MongoDB the records of one stream in this many
    /// (0 = off). Off by default: on FerretDB 1.24 (SQLite) every `_id` lookup scans the whole
    /// collection, which takes CPU from the worker's own inserts.
    #[arg(long, default_value_t = 0)]
    pub mongo_lookups: usize,
    /// Latency: at most this many seconds after the load ends for the last records to show
    /// up; records still missing count as slower than every seen one.
    #[arg(long, default_value_t = 15.0)]
    pub latency_drain_seconds: f64,
    /// Latency: a second, lighter run with this many streams; `auto` = a quarter of the
    /// measured throughput (in streams of real-time audio), `0` = none.
    #[arg(long, default_value = "auto")]
    pub latency_light_streams: String,
    /// Latency: also run the main stream count with every stream's chunk sent at the same
    /// instant (the worst-case burst); the main run staggers the streams' chunk boundaries.
    #[arg(long)]
    pub latency_aligned: bool,
    /// Skip the latency phase.
    #[arg(long)]
    pub skip_latency: bool,

    /// Memory: comma-separated counts of one-chunk streams.
    #[arg(long, default_value = "5000,20000")]
    pub memory_streams: String,
    /// Memory: chunk length in ms (default: one sample less than a frame, so the stream's
    /// state is live but no record is written).
    #[arg(long)]
    pub memory_chunk_ms: Option<u64>,
    /// Skip the memory phase.
    #[arg(long)]
    pub skip_memory: bool,

    /// Keep the topics and databases the run created.
    #[arg(long)]
    pub keep: bool,
}

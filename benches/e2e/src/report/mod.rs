//! The figures of one benchmark run as one typed [`Report`] (nested per-phase structs), the
//! statistics they are computed with, and the two ways the report is shown: the table
//! ([`Report::table`]) and the JSON (`serde`, same field names as the table's sources).
//!
//! Non-finite numbers (a percentile of nothing, a ratio over a zero) are written as JSON
//! `null` and shown as `-` in the table.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

mod stats;
mod table;

pub use stats::*;

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `bench-<unix seconds>`: prefix of every topic, group and database of the run.
    pub run_id: String,
    /// The machine and what it did before the run.
    pub machine: Machine,
    /// The load and the worker's framing.
    pub parameters: Parameters,
    /// This process's command line.
    pub command_line: String,
    /// Where worker and producer logs went.
    pub logs: PathBuf,
    /// The preloaded input topic of the throughput phase.
    pub preload: Preload,
    /// The main throughput run (`worker_threads` from the config).
    pub throughput: ThroughputRun,
    /// The ceilings on the same data.
    pub ceilings: Vec<Ceiling>,
    /// The smallest candidate ceiling and the worker's rate as a fraction of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bound: Option<Bound>,
    /// Throughput runs over `runtime.worker_threads` (empty with `--skip-scaling`).
    pub scaling: Vec<ThroughputRun>,
    /// Runs with several instances in one consumer group (empty with `--skip-instances`).
    pub instances: Vec<InstancesRun>,
    /// The latency runs (absent with `--skip-latency`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<Vec<LatencyRun>>,
    /// The memory runs (absent with `--skip-memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory: Option<Vec<MemoryRow>>,
    /// `/proc/loadavg` at the end.
    pub loadavg_at_end: String,
}

/// The machine: nproc, CPU model, RAM, kernel, load, service versions.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// What the machine and the services did in 3 s before the run (others' load).
    pub idle_before_run: IdleLoad,
    /// Cores available to this process.
    pub nproc: usize,
    /// `model name` of `/proc/cpuinfo`.
    pub cpu_model: String,
    /// `MemTotal` in GB.
    pub ram_gb: Option<f64>,
    /// Kernel release.
    pub kernel: String,
    /// `/proc/loadavg` at the start.
    pub loadavg_at_start: String,
    /// `buildInfo` version of the MongoDB-compatible server.
    pub mongodb_server_version: Option<String>,
    /// The broker's pid at the start.
    pub kafka_pid: Option<u32>,
    /// The MongoDB server's pid at the start.
    pub mongo_pid: Option<u32>,
}

/// Cores busy before the run, while nothing of ours ran.
#[derive(Debug, Serialize)]
pub struct IdleLoad {
    /// The broker.
    pub kafka_cores: Option<f64>,
    /// The MongoDB server.
    pub mongo_cores: Option<f64>,
    /// The whole machine.
    pub machine_busy_cores: f64,
}

/// The load and the worker's framing.
#[derive(Debug, Serialize)]
pub struct Parameters {
    /// Throughput streams.
    pub streams: usize,
    /// Seconds of audio per throughput stream.
    pub seconds: f64,
    /// Chunk duration in ms.
    pub chunk_ms: u64,
    /// `--signal`.
    pub signal: String,
    /// Partitions of every input topic.
    pub partitions: i32,
    /// `dsp.frame_length`.
    pub frame_length: usize,
    /// `dsp.hop_length`.
    pub hop_length: usize,
    /// `dsp.features`.
    pub features: Vec<specflow::dsp::FeatureChoice>,
    /// `source.batch_max_messages`.
    pub batch_max_messages: usize,
    /// The worker's config file.
    pub config: PathBuf,
}

/// The preloaded input topic.
#[derive(Debug, Serialize)]
pub struct Preload {
    /// Input messages.
    pub messages: u64,
    /// Payload bytes.
    pub bytes: u64,
    /// Records the worker must store.
    pub records_expected: u64,
    /// Frames the worker must compute.
    pub frames_expected: u64,
    /// Seconds of audio over all streams.
    pub audio_seconds: f64,
    /// Wall seconds of `specflow produce`.
    pub produce_wall_s: f64,
    /// Its rate.
    pub produce_messages_per_s: f64,
}

/// CPU seconds used in a window, per process and machine-wide.
#[derive(Debug, Clone, Serialize)]
pub struct CpuUse {
    /// Wall seconds of the window.
    pub wall_s: f64,
    /// The worker.
    pub worker_cpu_s: f64,
    /// The broker (`None` when it restarted or is unknown).
    pub kafka_cpu_s: Option<f64>,
    /// The MongoDB server (`None` when it restarted or is unknown).
    pub mongo_cpu_s: Option<f64>,
    /// This process.
    pub bench_cpu_s: f64,
    /// The `specflow produce` process, when one ran.
    pub producer_cpu_s: Option<f64>,
    /// The machine, all processes.
    pub machine_busy_cpu_s: f64,
    /// Cores the machine's counters saw (total CPU seconds / wall).
    pub machine_cores_seen: f64,
    /// Busy CPU not accounted for by the processes above.
    pub other_processes_cpu_s: f64,
}

/// Whether a worker run was disturbed.
#[derive(Debug, Clone, Serialize)]
pub struct RunHealth {
    /// The broker's pid changed during the run.
    pub kafka_restarted: bool,
    /// The MongoDB server's pid changed during the run.
    pub mongo_restarted: bool,
    /// WARN and ERROR lines in the worker's log.
    pub worker_warnings_and_errors: usize,
    /// The first few distinct ones.
    pub first_distinct: Vec<String>,
}

/// The checkpoint topic's share of a throughput run, from the worker's final scrape.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointOverhead {
    /// Checkpoint records acknowledged per input message.
    pub checkpoints_per_message: f64,
    /// Checkpoint payload bytes acknowledged per input message.
    pub checkpoint_bytes_per_message: f64,
    /// Checkpoint records per batch (`processing_seconds_count`).
    pub checkpoints_per_batch: f64,
    /// `specflow_checkpoint_write_seconds_sum`: store writers' time writing checkpoints until
    /// acknowledged.
    pub checkpoint_write_s: f64,
    /// That time over the run's wall time.
    pub checkpoint_write_share: f64,
    /// Mean per batch that wrote checkpoints (`_sum / _count`), in ms.
    pub checkpoint_write_ms_per_batch: f64,
}

/// One instance's share of an [`InstancesRun`], at its end.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceShare {
    /// Partitions the instance held at the end.
    pub assigned_partitions: f64,
    /// Messages it consumed.
    pub messages: f64,
    /// Rebalance events it saw.
    pub rebalances: f64,
}

/// The preloaded topic consumed by several instances in one consumer group.
#[derive(Debug, Clone, Serialize)]
pub struct InstancesRun {
    /// `i<instances>x<threads>`.
    pub tag: String,
    /// `specflow run` processes in the group.
    pub instances: usize,
    /// `runtime.worker_threads` of each.
    pub threads_each: usize,
    /// First message consumed (any instance) → last record stored (all).
    pub wall_s: f64,
    /// Input messages per second.
    pub messages_per_s: f64,
    /// Audio seconds per wall second.
    pub x_realtime: f64,
    /// CPU seconds of all instances in the window.
    pub workers_cpu_s: f64,
    /// Cores the instances used together.
    pub workers_cores_used: f64,
    /// Worker CPU per input message, in µs.
    pub cpu_us_per_message: f64,
    /// Each instance's partitions and messages.
    pub per_instance: Vec<InstanceShare>,
    /// Every instance exited 0 on SIGTERM.
    pub clean_exit: bool,
}

/// One worker run over the preloaded topic.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRun {
    /// `main` or `t<threads>`.
    pub tag: String,
    /// `runtime.worker_threads` (`None`: the config's).
    pub worker_threads: Option<usize>,
    /// Input messages.
    pub messages: u64,
    /// Input bytes.
    pub bytes: u64,
    /// Records expected.
    pub records: u64,
    /// `frames_computed_total` at the end.
    pub frames_counted: f64,
    /// Frames expected.
    pub frames_expected: u64,
    /// Documents in the run's collection afterwards.
    pub stored_documents: u64,
    /// Dead letters over every reason.
    pub dead_letters: f64,
    /// Seconds from spawn to the first consumed message.
    pub startup_s: f64,
    /// The window: first consumed message to last record stored.
    pub wall_s: f64,
    /// Messages already consumed at the first scrape that saw any.
    pub messages_in_flight_at_start: f64,
    /// Seconds of audio per wall second.
    pub x_realtime: f64,
    /// Input messages per second.
    pub messages_per_s: f64,
    /// Input MB per second.
    pub mb_per_s: f64,
    /// Frames per second.
    pub frames_per_s: f64,
    /// Records per second.
    pub records_per_s: f64,
    /// Worker CPU seconds in the window.
    pub worker_cpu_s: f64,
    /// Worker CPU seconds over its whole life.
    pub worker_cpu_total_s: f64,
    /// Worker CPU / wall.
    pub worker_cores_used: f64,
    /// Worker CPU µs per input message.
    pub cpu_us_per_message: f64,
    /// The same by thread group (thread name without its number; `(ended threads)`: threads
    /// that ended within the window).
    pub cpu_us_per_message_by_thread: BTreeMap<String, f64>,
    /// `VmHWM` of the worker.
    pub peak_rss_mb: f64,
    /// CPU of every process in the window.
    pub cpu: CpuUse,
    /// Batches (`processing_seconds_count`).
    pub batches: f64,
    /// Messages per batch.
    pub mean_batch_messages: f64,
    /// `processing_seconds_sum` (DSP and encoding).
    pub processing_s: f64,
    /// `mongo_write_seconds_sum`.
    pub mongo_write_s: f64,
    /// Processing over wall.
    pub processing_share: f64,
    /// MongoDB writes over wall.
    pub mongo_write_share: f64,
    /// The checkpoint topic's share.
    #[serde(flatten)]
    pub checkpoints: CheckpointOverhead,
    /// The worker exited 0 after SIGTERM.
    pub clean_exit: bool,
    /// Disturbances.
    pub run_health: RunHealth,
    /// Why this row exists (the scaling row that reuses the main run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// What a ceiling measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CeilingKind {
    /// Kafka consume-only.
    Kafka,
    /// DSP alone, one thread.
    DspSingle,
    /// DSP alone, every core.
    Dsp,
    /// DSP and record encoding, every core.
    DspEncode,
    /// DSP and record encoding, one thread.
    DspEncodeSingle,
    /// MongoDB `insert_many`.
    Mongo,
}

/// One ceiling: a part of the pipeline alone on the same data.
#[derive(Debug, Clone, Serialize)]
pub struct Ceiling {
    /// What ran.
    pub what: String,
    /// Which part.
    pub kind: CeilingKind,
    /// Input messages per second it sustains.
    pub messages_per_s: f64,
    /// Input MB per second.
    pub mb_per_s: f64,
    /// Seconds of audio per wall second (not for Kafka).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x_realtime: Option<f64>,
    /// The worker's rate over this one.
    pub worker_ratio: f64,
    /// Whether it can be the bound (the best Kafka client, the multi-core DSP, MongoDB).
    pub candidate_bound: bool,
    /// The figures particular to the kind.
    #[serde(flatten)]
    pub detail: CeilingDetail,
}

/// Figures particular to one kind of ceiling.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum CeilingDetail {
    /// rdkafka consume-only.
    Rdkafka {
        /// Messages consumed.
        messages: u64,
        /// Wall seconds from the assignment to the last message.
        wall_s: f64,
        /// Seconds until the first message.
        first_message_after_s: Option<f64>,
    },
    /// Kafka's Java `ConsumerPerformance`.
    JavaConsumer {
        /// `data.consumed.in.nMsg`.
        messages: f64,
        /// `fetch.time.ms`.
        fetch_time_ms: f64,
        /// `nMsg.sec` (group join included).
        messages_per_s_incl_join: f64,
    },
    /// DSP passes.
    Dsp {
        /// Threads.
        threads: usize,
        /// The fastest pass.
        wall_s: f64,
        /// Every pass, fastest first.
        pass_walls_s: Vec<f64>,
        /// Frames computed.
        frames: u64,
        /// Frames per second.
        frames_per_s: f64,
        /// Wall µs per frame per thread.
        us_per_frame_per_thread: f64,
        /// Mean JSON bytes per record (when encoding).
        json_bytes_per_record: Option<f64>,
        /// Mean BSON bytes per record (when encoding).
        bson_bytes_per_record: Option<f64>,
    },
    /// MongoDB `insert_many`.
    Mongo {
        /// Documents inserted.
        documents: usize,
        /// Documents in the collection afterwards.
        stored: u64,
        /// `insert_many` calls.
        inserts: usize,
        /// Wall seconds of all inserts.
        insert_s: f64,
        /// The slowest call.
        slowest_insert_s: f64,
        /// Documents per second.
        documents_per_s: f64,
        /// BSON MB per second.
        bson_mb_per_s: f64,
        /// Mean document size.
        mean_document_bytes: f64,
    },
}

/// The ceiling that holds.
#[derive(Debug, Serialize)]
pub struct Bound {
    /// Its `what`.
    pub what: String,
    /// Its rate.
    pub messages_per_s: f64,
    /// The worker's rate over it.
    pub worker_ratio: f64,
    /// The target ratio.
    pub target_ratio: f64,
    /// Whether the worker reaches the target.
    pub met: bool,
}

/// One latency run.
#[derive(Debug, Serialize)]
pub struct LatencyRun {
    /// `lat` or `light`.
    pub tag: String,
    /// Real-time streams.
    pub streams: usize,
    /// `staggered` (each stream's chunks offset by its share of a chunk period, as
    /// independent sources are) or `aligned` (every stream's chunk at the same instant).
    pub chunk_boundaries: String,
    /// Chunk duration.
    pub chunk_ms: u64,
    /// Warm-up seconds.
    pub warmup_s: f64,
    /// Measured seconds.
    pub measured_s: f64,
    /// Drain limit after the load.
    pub drain_limit_s: f64,
    /// Messages per second offered.
    pub offered_messages_per_s: f64,
    /// MB per second offered.
    pub offered_mb_per_s: f64,
    /// Records expected.
    pub records_expected: u64,
    /// Records seen on the output topic.
    pub records_seen: usize,
    /// Records seen more than once.
    pub duplicates_seen: usize,
    /// Output messages that were not records.
    pub unparsed: usize,
    /// Wall seconds of `specflow produce --realtime`.
    pub producer_wall_s: f64,
    /// Produce → output topic, measured window.
    pub to_output_topic: LatencySummary,
    /// Produce → output topic, warm-up.
    pub to_output_topic_warmup: LatencySummary,
    /// Of `to_output_topic`, seen records: produce → the worker's produce call (the output
    /// message's timestamp; input broker hop, waiting for a batch, DSP and encoding).
    pub to_worker_produce: LatencySummary,
    /// The rest: the worker's produce call → the observer (producer linger, broker append and
    /// acknowledgement, the observer's fetch).
    pub worker_produce_to_observer: LatencySummary,
    /// Produce → MongoDB by the acknowledged-write counter.
    pub to_mongodb: LatencySummary,
    /// How `to_mongodb` is taken.
    pub mongodb_method: MongoMethod,
    /// Produce → MongoDB by `_id` lookups (when enabled).
    pub to_mongodb_by_id_lookup: Option<LatencySummary>,
    /// The `_id` lookups.
    pub mongodb_lookups: MongoLookups,
    /// The worker in the measured window.
    pub window: LatencyWindow,
    /// The worker over its whole run.
    pub whole_run: LatencyWholeRun,
    /// `VmHWM` of the worker.
    pub worker_peak_rss_mb: f64,
    /// `/readyz` while idle.
    pub readyz_while_idle: String,
    /// Dead letters over every reason.
    pub worker_dead_letters: f64,
    /// The worker exited 0 after SIGTERM.
    pub clean_exit: bool,
    /// Disturbances.
    pub run_health: RunHealth,
    /// The p99 target (main run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_p99_ms: Option<u64>,
    /// Whether p99 to the output topic is under the target (main run only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub met: Option<bool>,
}

/// How the MongoDB latency is taken.
#[derive(Debug, Serialize)]
pub struct MongoMethod {
    /// The method.
    pub what: &'static str,
    /// `/metrics` polling interval.
    pub metrics_interval_ms: u64,
    /// Mean scrape duration.
    pub scrape_mean_ms: f64,
    /// p99 scrape duration.
    pub scrape_p99_ms: f64,
    /// Interval plus mean scrape.
    pub resolution_ms: f64,
    /// Changes of the counter seen.
    pub write_events: usize,
}

/// The `_id` lookups of sampled records.
#[derive(Debug, Serialize)]
pub struct MongoLookups {
    /// Whether they ran.
    pub enabled: bool,
    /// Polling interval.
    pub interval_ms: u64,
    /// Which streams.
    pub sampled: String,
    /// How.
    pub method: String,
    /// Lookups issued.
    pub lookups: u64,
    /// Rounds with something pending.
    pub rounds: u64,
    /// Records found by their first lookup.
    pub found_on_first_lookup: usize,
    /// Records never found.
    pub unresolved: usize,
    /// Mean ms between last miss and hit.
    pub resolution_mean_ms: f64,
    /// p99 of that.
    pub resolution_p99_ms: f64,
    /// Mean round duration.
    pub round_mean_ms: f64,
    /// Slowest round.
    pub round_max_ms: f64,
}

/// The worker in the measured window of a latency run.
#[derive(Debug, Serialize)]
pub struct LatencyWindow {
    /// Messages consumed per second.
    pub messages_per_s: f64,
    /// Worker CPU / wall.
    pub worker_cores_used: f64,
    /// Messages per batch.
    pub mean_batch_messages: f64,
    /// DSP and encoding per batch.
    pub processing_ms_per_batch: f64,
    /// MongoDB insert per batch.
    pub mongo_write_ms_per_batch: f64,
    /// CPU of every process.
    pub cpu: CpuUse,
}

/// The worker over a whole latency run (final scrape).
#[derive(Debug, Serialize)]
pub struct LatencyWholeRun {
    /// Batches.
    pub batches: f64,
    /// Messages per batch.
    pub mean_batch_messages: f64,
    /// DSP and encoding per batch.
    pub processing_ms_per_batch: f64,
    /// MongoDB insert per batch.
    pub mongo_write_ms_per_batch: f64,
    /// Documents per second of insert time.
    pub mongo_docs_per_s_while_writing: f64,
    /// Checkpoint records per input message.
    pub checkpoints_per_message: f64,
    /// Checkpoint bytes per input message.
    pub checkpoint_bytes_per_message: f64,
    /// Checkpoint records per batch.
    pub checkpoints_per_batch: f64,
}

/// One memory run.
#[derive(Debug, Serialize)]
pub struct MemoryRun {
    /// One-chunk streams.
    pub streams: usize,
    /// Chunk length.
    pub chunk_ms: u64,
    /// Whether the chunks carried `audio.eos`.
    pub eos: bool,
    /// `mongo_documents_written_total`.
    pub records_written: f64,
    /// `live_streams`.
    pub live_streams: f64,
    /// `stream_state_bytes`.
    pub stream_state_bytes_metric: f64,
    /// `VmRSS` before the load.
    pub rss_before_mb: f64,
    /// `VmRSS` after it.
    pub rss_after_mb: f64,
    /// `VmHWM`.
    pub peak_rss_mb: f64,
    /// The worker exited 0 after SIGTERM.
    pub clean_exit: bool,
    /// Disturbances.
    pub run_health: RunHealth,
}

/// Live against freed state for one stream count.
#[derive(Debug, Serialize)]
pub struct MemoryRow {
    /// Streams.
    pub streams: usize,
    /// Without `audio.eos`.
    pub live: MemoryRun,
    /// With `audio.eos`.
    pub freed: MemoryRun,
    /// Live minus freed RSS per 1000 streams.
    pub rss_growth_mb_per_1000_streams: f64,
    /// Live minus freed peak RSS per 1000 streams.
    pub peak_rss_growth_mb_per_1000_streams: f64,
    /// Live RSS after minus before, per 1000 streams.
    pub rss_growth_vs_idle_mb_per_1000_streams: f64,
    /// The worker's own state estimate per 1000 streams.
    pub state_metric_mb_per_1000_streams: f64,
}

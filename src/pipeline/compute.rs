//! The DSP fan-out: a batch's messages, grouped by partition, decoded and computed on the
//! worker threads (one [`Scratch`] each), each partition in order, into records, dead letters
//! and the checkpoints of the streams they touched.

use anyhow::Context as _;
use rdkafka::message::{Headers, Message, OwnedMessage};
use std::collections::HashMap;
use std::sync::Arc;
use tracing::{error, info};

use super::batch::{Outcome, PartitionResult};
use super::state::streams::{ExtractorCache, PartitionStreams, WorkspaceSet};
use crate::audio;
use crate::config::Settings;
use crate::dsp::FrameBatch;
use crate::record::{FeatureRecord, SourcePosition};
use crate::sinks::dead_letter::DeadLetter;
use crate::telemetry::metrics::Metrics;

/// One worker thread's reusable buffers: DSP workspaces, the frames of the message at hand
/// and its decoded samples.
#[derive(Default)]
pub(super) struct Scratch {
    workspaces: WorkspaceSet,
    frames: FrameBatch,
    samples: Vec<f32>,
}

/// The DSP side of the worker: settings, the shared extractor plans and per-thread scratch.
pub(super) struct Compute {
    settings: Settings,
    metrics: Arc<Metrics>,
    cache: Arc<ExtractorCache>,
    scratch: Vec<Scratch>,
    /// `runtime.worker_threads` resolved once (0 is the CPUs available, which takes a read of
    /// the cgroup files each time it is asked).
    threads: usize,
    /// `threads` threads, started once (`None` with one thread: a batch is
    /// computed on the calling thread).
    pool: Option<rayon::ThreadPool>,
}

/// The stream id a message's key names, if it is valid UTF-8.
fn stream_key(message: &OwnedMessage) -> Option<&str> {
    message.key().and_then(|k| std::str::from_utf8(k).ok())
}

/// Dead-letters `message`; a known stream's checkpoint records it, so a replay skips it.
fn reject(
    table: &mut PartitionStreams,
    message: &OwnedMessage,
    error: String,
    reason: &'static str,
) -> Outcome {
    table.reject(stream_key(message), message.offset());
    Outcome::Dead(Box::new(DeadLetter::from_message(message, error)), reason)
}

impl Compute {
    /// A compute stage for `settings` over the shared `cache`.
    pub(super) fn new(
        settings: Settings,
        metrics: Arc<Metrics>,
        cache: Arc<ExtractorCache>,
    ) -> anyhow::Result<Self> {
        let threads = settings.runtime.effective_worker_threads();
        let pool = if threads > 1 {
            Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .thread_name(|i| format!("specflow-dsp-{i}"))
                    .build()
                    .context("cannot start the DSP threads")?,
            )
        } else {
            None
        };
        Ok(Self {
            settings,
            metrics,
            cache,
            scratch: Vec::new(),
            threads,
            pool,
        })
    }

    /// Decodes and computes one partition's messages in order.
    fn process_partition(
        &self,
        table: &mut PartitionStreams,
        messages: &[OwnedMessage],
        scratch: &mut Scratch,
    ) -> Vec<Outcome> {
        let Scratch {
            workspaces,
            frames,
            samples,
        } = scratch;
        let mut outcomes = Vec::with_capacity(messages.len());
        for message in messages {
            // Handled before the stream's checkpoint: emitted (or dead-lettered) back then.
            if stream_key(message).is_some_and(|id| table.already_handled(id, message.offset())) {
                table.skip_replayed(message.offset());
                self.metrics.messages_replayed_total.inc();
                outcomes.push(Outcome::Nothing);
                continue;
            }
            let headers = message.headers();
            let header_pairs = headers
                .iter()
                .flat_map(|h| h.iter().map(|h| (h.key, h.value)));
            let timestamp = message.timestamp().to_millis();
            let meta = match audio::decode(
                &self.settings.input,
                message.key(),
                message.payload(),
                header_pairs,
                timestamp,
                samples,
            ) {
                Ok(meta) => meta,
                Err(e) => {
                    outcomes.push(reject(table, message, e.to_string(), e.reason()));
                    continue;
                }
            };
            let applied = table.apply(
                &self.cache,
                &self.settings.streams,
                workspaces,
                &meta,
                samples,
                message.offset(),
                frames,
            );
            let outcome = match applied {
                Err(e) => {
                    outcomes.push(reject(table, message, e.to_string(), e.reason()));
                    continue;
                }
                Ok(outcome) => outcome,
            };
            if outcome.gap {
                self.metrics.stream_gaps_total.inc();
                info!(stream = %meta.stream_id, start_sample = meta.start_sample, "Gap in stream; state reset.");
            }
            if outcome.evicted_for_cap {
                self.metrics.streams_evicted_total.inc();
            }
            if frames.is_empty() {
                outcomes.push(Outcome::Nothing);
                continue;
            }
            self.metrics
                .frames_computed_total
                .inc_by(frames.len() as u64);
            let source = SourcePosition {
                topic: message.topic().to_string(),
                partition: message.partition(),
                offset: message.offset(),
                timestamp_ms: meta.timestamp_ms,
            };
            let record = FeatureRecord::of_chunk(&meta, self.cache.config(), frames, &source);
            match record.encode(self.settings.mongo.layout) {
                Ok(encoded) => outcomes.push(Outcome::Record(Box::new(encoded))),
                Err(e) => {
                    error!(stream = %meta.stream_id, error = %e, "Cannot encode record.");
                    outcomes.push(Outcome::Dead(
                        Box::new(DeadLetter::from_message(
                            message,
                            format!("cannot encode record: {e}"),
                        )),
                        "encode",
                    ));
                }
            }
        }
        outcomes
    }

    /// Runs the DSP for a whole batch, partitions spread over the worker threads.
    pub(super) fn process_batch(
        &mut self,
        tables: &mut HashMap<i32, PartitionStreams>,
        by_partition: Vec<(i32, Vec<OwnedMessage>)>,
    ) -> Vec<PartitionResult> {
        let threads = self.threads.min(by_partition.len()).max(1);
        while self.scratch.len() < threads {
            self.scratch.push(Scratch::default());
        }
        // Partitions dealt to the threads by message count, largest first, each to the thread
        // with the fewest messages so far.
        let mut by_partition = by_partition;
        by_partition.sort_by_key(|(_, messages)| std::cmp::Reverse(messages.len()));
        let mut groups: Vec<Vec<(i32, PartitionStreams, Vec<OwnedMessage>)>> =
            (0..threads).map(|_| Vec::new()).collect();
        let mut load = vec![0usize; threads];
        for (partition, messages) in by_partition {
            let table = tables
                .remove(&partition)
                .unwrap_or_else(|| PartitionStreams::new(partition));
            let lightest = (0..threads).min_by_key(|&g| load[g]).unwrap_or(0);
            load[lightest] += messages.len();
            groups[lightest].push((partition, table, messages));
        }
        let mut scratch: Vec<Scratch> = self.scratch.drain(..threads).collect();
        let this = &*self;
        let compute_group = |(group, scratch): (Vec<_>, &mut Scratch)| {
            group
                .into_iter()
                .map(
                    |(partition, mut table, messages): (i32, PartitionStreams, Vec<_>)| {
                        let outcomes = this.process_partition(&mut table, &messages, scratch);
                        let checkpoints = table.take_checkpoints();
                        let result = PartitionResult {
                            partition,
                            outcomes,
                            checkpoints,
                        };
                        (table, result)
                    },
                )
                .collect::<Vec<_>>()
        };
        let results: Vec<Vec<(PartitionStreams, PartitionResult)>> = match &self.pool {
            Some(pool) if threads > 1 => pool.install(|| {
                use rayon::prelude::*;
                groups
                    .into_par_iter()
                    .zip(scratch.par_iter_mut())
                    .map(compute_group)
                    .collect()
            }),
            _ => groups
                .into_iter()
                .zip(scratch.iter_mut())
                .map(compute_group)
                .collect(),
        };
        self.scratch.extend(scratch);
        results
            .into_iter()
            .flatten()
            .map(|(table, result)| {
                tables.insert(result.partition, table);
                result
            })
            .collect()
    }
}

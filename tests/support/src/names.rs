//! Run names: a prefix no other run uses, the topics, group and database of one worker run,
//! and creating topics.

use anyhow::bail;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::time::Duration;

/// `PREFIX-<pid>-<nanoseconds>`: a name no other test or benchmark run uses.
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        nanos % 1_000_000_000_000
    )
}

/// Topics, consumer group and database of one worker run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    /// `source.topic`: `<base>.in`.
    pub input: String,
    /// `output.topic`: `<base>.out`.
    pub output: String,
    /// `dead_letter.topic`: `<base>.dlq`.
    pub dead_letter: String,
    /// `checkpoint.topic`: `<base>.checkpoints`.
    pub checkpoint: String,
    /// `mongo.database`: the base with `.` and `-` replaced by `_`.
    pub database: String,
    /// `source.group_id`: `<base>.group`.
    pub group: String,
}

impl Names {
    /// Fresh names for a run labelled `test` (a [`unique`] base).
    pub fn new(test: &str) -> Self {
        Self::with_base(&unique(test))
    }

    /// The names derived from `base`, which the caller makes unique.
    pub fn with_base(base: &str) -> Self {
        Self {
            input: format!("{base}.in"),
            output: format!("{base}.out"),
            dead_letter: format!("{base}.dlq"),
            checkpoint: format!("{base}.checkpoints"),
            database: base.replace(['.', '-'], "_"),
            group: format!("{base}.group"),
        }
    }

    /// The four topics of the run with `partitions` each: input, output and dead-letter
    /// topics plain, the checkpoint topic compacted ([`specflow::pipeline::state::checkpoint_topic::new_topic`]).
    pub fn new_topics(&self, partitions: i32) -> Vec<NewTopic<'_>> {
        let mut topics: Vec<_> = [&self.input, &self.output, &self.dead_letter]
            .into_iter()
            .map(|t| plain_topic(t, partitions))
            .collect();
        topics.push(specflow::pipeline::state::checkpoint_topic::new_topic(
            &self.checkpoint,
            partitions,
            1,
        ));
        topics
    }
}

/// A topic of `partitions` partitions with one replica and the broker's defaults.
pub fn plain_topic(name: &str, partitions: i32) -> NewTopic<'_> {
    NewTopic::new(name, partitions, TopicReplication::Fixed(1))
}

/// Creates `topics` and waits until the broker's metadata lists each with all its partitions
/// led (as the worker does: a broker that has just started lists a topic a moment after it
/// acknowledged it); returns their names, or the first topic that could not be created.
pub async fn create_topics(
    admin: &AdminClient<DefaultClientContext>,
    topics: &[NewTopic<'_>],
) -> anyhow::Result<Vec<String>> {
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let mut created = Vec::with_capacity(topics.len());
    for result in admin.create_topics(topics, &options).await? {
        match result {
            Ok(topic) => created.push(topic),
            Err((topic, code)) => bail!("cannot create topic {topic}: {code}"),
        }
    }
    let wanted: Vec<_> = topics
        .iter()
        .map(|t| (t.name, usize::try_from(t.num_partitions).ok()))
        .collect();
    specflow::kafka::topics::await_listed(
        admin.inner(),
        &wanted,
        specflow::kafka::topics::LISTED_WAIT,
    )
    .await?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_derive_from_one_base() {
        let names = Names::with_base("bench-1.main");
        assert_eq!(names.input, "bench-1.main.in");
        assert_eq!(names.output, "bench-1.main.out");
        assert_eq!(names.dead_letter, "bench-1.main.dlq");
        assert_eq!(names.checkpoint, "bench-1.main.checkpoints");
        assert_eq!(names.group, "bench-1.main.group");
        assert_eq!(names.database, "bench_1_main");
        assert_eq!(names.new_topics(3).len(), 4);
    }
}

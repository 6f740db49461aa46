//! Kafka clients whose close never blocks their owner.
//!
//! rdkafka closes a consumer that has a `group.id` when it is dropped, and waits without a
//! bound until librdkafka reports it closed. librdkafka can keep looking for the group
//! coordinator for good when the brokers do not answer
//! (<https://github.com/confluentinc/librdkafka/issues/3740>), so such a drop can block the
//! thread it runs on forever: a checkpoint restore would never finish, a runtime would never
//! shut down. [`ClosedApart`] drops its consumer on a thread of its own instead; it serves a
//! replaced producer too, whose drop purges and flushes what it still holds.

use std::ops::Deref;
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// A close that takes longer than this is logged as a warning.
const SLOW_CLOSE: Duration = Duration::from_secs(5);

/// A Kafka client (a consumer, or a replaced producer) closed on a thread of its own when
/// dropped; derefs to the client.
pub struct ClosedApart<C: Send + 'static> {
    client: Option<C>,
    /// What the client is for, named in the log.
    what: &'static str,
}

impl<C: Send + 'static> ClosedApart<C> {
    /// Wraps `client`, used for `what` (named in the log).
    pub fn new(what: &'static str, client: C) -> Self {
        Self {
            client: Some(client),
            what,
        }
    }
}

impl<C: Send + 'static> Deref for ClosedApart<C> {
    type Target = C;

    fn deref(&self) -> &C {
        self.client
            .as_ref()
            .expect("the client is only taken by drop")
    }
}

impl<C: Send + 'static> Drop for ClosedApart<C> {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let what = self.what;
        let closing = std::thread::Builder::new()
            .name("specflow-close".into())
            .spawn(move || {
                let started = Instant::now();
                drop(client);
                let waited_ms = started.elapsed().as_millis() as u64;
                if started.elapsed() > SLOW_CLOSE {
                    warn!(
                        client = what,
                        waited_ms, "A Kafka client took long to close."
                    );
                } else {
                    debug!(client = what, waited_ms, "Kafka client closed.");
                }
            });
        if let Err(e) = closing {
            // The closure, and the client with it, was dropped here by the failed spawn.
            warn!(client = what, error = %e, "Cannot start a thread to close a Kafka client; it was closed in place.");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// Blocks its drop until told to go on.
    struct SlowToClose(mpsc::Receiver<()>, mpsc::Sender<&'static str>);

    impl Drop for SlowToClose {
        fn drop(&mut self) {
            let _ = self.0.recv();
            let _ = self.1.send("closed");
        }
    }

    #[test]
    fn a_drop_that_blocks_does_not_block_the_owner() {
        let (release, released) = mpsc::channel();
        let (closed, was_closed) = mpsc::channel();
        let consumer = ClosedApart::new("test", SlowToClose(released, closed));
        let started = Instant::now();
        drop(consumer);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the owner did not wait for the close"
        );
        assert!(was_closed.try_recv().is_err(), "still closing");
        release.send(()).unwrap();
        assert_eq!(
            was_closed.recv_timeout(Duration::from_secs(10)),
            Ok("closed"),
            "the consumer is closed on its own thread"
        );
    }
}

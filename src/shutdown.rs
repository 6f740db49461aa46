//! Stop requests and the stop deadline.
//!
//! The first SIGTERM/SIGINT cancels the [`Shutdown`] token and starts the drain clock: the worker
//! (and the gateway) must be done by [`Shutdown::deadline`], `shutdown.drain_timeout_secs` after
//! the signal. Two guards make that bound hold whatever librdkafka or a server is doing:
//! - signals are served on a thread of their own with its own small runtime, so a second
//!   signal exits at once ([`EXIT_ABORTED`]) even while the main runtime is shutting down;
//! - a watchdog on that thread exits the process with [`EXIT_UNFINISHED`] at the deadline plus
//!   [`DEADLINE_MARGIN`], should a blocking call (a consumer close during a broker outage) still
//!   hold it.
//!
//! Exit codes of `specflow run` and `specflow gateway`: 0 drained (everything handed over and
//! committed), 1 error, 2 invalid configuration, [`EXIT_UNFINISHED`] stopped with work not
//! stored (it is replayed by the next owner; nothing past it was committed), [`EXIT_ABORTED`]
//! a second signal.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Exit code when the process stopped with work not stored: the drain deadline passed, or a
/// sink was down when the stop came (`EX_TEMPFAIL`: the next owner replays that work).
pub const EXIT_UNFINISHED: u8 = 75;

/// Exit code on a second stop signal: no drain at all.
pub const EXIT_ABORTED: u8 = 130;

/// How long after the drain deadline the process may still take to exit: closing the Kafka
/// clients and the runtime. Supervisors must wait at least `drain_timeout_secs` plus this
/// before they kill (systemd `TimeoutStopSec`, Kubernetes `terminationGracePeriodSeconds`).
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(5);

/// The part of [`DEADLINE_MARGIN`] that closing the consumer may use after the deadline; the
/// rest is for the runtime's shutdown and the process exit.
pub const CLOSE_GRACE: Duration = Duration::from_secs(3);

/// Why the signal handlers could not be put in place.
#[derive(Debug, thiserror::Error)]
pub enum SignalSetupError {
    /// The signal thread could not be started.
    #[error("cannot start the signal thread: {0}")]
    Thread(std::io::Error),
    /// The signal thread's runtime could not be built.
    #[error("cannot build the signal thread's runtime: {0}")]
    Runtime(std::io::Error),
    /// A signal handler could not be registered.
    #[error("cannot handle {signal}: {source}")]
    Handler {
        /// `SIGTERM` or `SIGINT`.
        signal: &'static str,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The signal thread ended without saying whether its handlers are in place.
    #[error("the signal thread ended before its handlers were in place")]
    Gone,
}

/// A stop request shared by everything that must stop: a cancellation token and the moment the
/// stop was asked for, which fixes the deadline.
#[derive(Clone, Debug)]
pub struct Shutdown {
    token: CancellationToken,
    requested_at: Arc<OnceLock<Instant>>,
    drain: Duration,
}

impl Shutdown {
    /// Nothing requested yet; a stop will allow `drain` to finish.
    pub fn new(drain: Duration) -> Self {
        Self {
            token: CancellationToken::new(),
            requested_at: Arc::default(),
            drain,
        }
    }

    /// Asks everything to stop (idempotent: the first request fixes the deadline).
    pub fn request(&self) {
        self.requested_at.get_or_init(Instant::now);
        self.token.cancel();
    }

    /// Whether a stop was requested.
    pub fn is_requested(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves once a stop is requested.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }

    /// The token cancelled by [`Shutdown::request`].
    pub fn token(&self) -> &CancellationToken {
        &self.token
    }

    /// When the drain must be over: the stop request plus the drain time (from now when no
    /// stop was requested, e.g. the worker stops on an error).
    pub fn deadline(&self) -> Instant {
        *self.requested_at.get_or_init(Instant::now) + self.drain
    }

    /// Time left until [`Shutdown::deadline`] (zero once it passed).
    pub fn remaining(&self) -> Duration {
        self.deadline().saturating_duration_since(Instant::now())
    }

    /// Serves SIGTERM and SIGINT on a thread of its own: the first requests the stop and arms
    /// the watchdog (exit [`EXIT_UNFINISHED`] at the deadline plus [`DEADLINE_MARGIN`]), a
    /// second exits at once with [`EXIT_ABORTED`]. Returns once the handlers are in place, or
    /// why they could not be.
    pub fn install_signal_handlers(&self) -> Result<(), SignalSetupError> {
        let shutdown = self.clone();
        let (ready, installed) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name("specflow-signals".into())
            .spawn(move || {
                match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime.block_on(shutdown.serve_signals(ready)),
                    Err(e) => {
                        let _ = ready.send(Err(SignalSetupError::Runtime(e)));
                    }
                }
            })
            .map_err(SignalSetupError::Thread)?;
        // The thread reports once its handlers are registered (or why it could not).
        installed.recv().unwrap_or(Err(SignalSetupError::Gone))
    }

    async fn serve_signals(self, ready: std::sync::mpsc::SyncSender<Result<(), SignalSetupError>>) {
        use tokio::signal::unix::{SignalKind, signal};
        let handler = |kind: SignalKind, name: &'static str| {
            signal(kind).map_err(|source| SignalSetupError::Handler {
                signal: name,
                source,
            })
        };
        let (mut term, mut int) = match handler(SignalKind::terminate(), "SIGTERM")
            .and_then(|term| Ok((term, handler(SignalKind::interrupt(), "SIGINT")?)))
        {
            Ok(handlers) => handlers,
            Err(e) => {
                let _ = ready.send(Err(e));
                return;
            }
        };
        let _ = ready.send(Ok(()));
        let first = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        self.request();
        info!(
            signal = first,
            drain_timeout_secs = self.drain.as_secs(),
            "Stop requested; draining (send the signal again to abort)."
        );
        let hard_deadline = self.deadline() + DEADLINE_MARGIN;
        tokio::select! {
            _ = term.recv() => abort("SIGTERM"),
            _ = int.recv() => abort("SIGINT"),
            _ = tokio::time::sleep_until(hard_deadline.into()) => {
                error!(
                    margin_secs = DEADLINE_MARGIN.as_secs(),
                    "Still running past the drain deadline and its margin; exiting without finishing (the work not stored is replayed by the next owner)."
                );
                eprintln!("error: drain deadline passed; exiting with code {EXIT_UNFINISHED}");
                std::process::exit(EXIT_UNFINISHED.into());
            }
        }
    }
}

fn abort(signal: &str) -> ! {
    error!(signal, "Second stop signal; aborting without draining.");
    eprintln!("error: second stop signal; exiting with code {EXIT_ABORTED}");
    std::process::exit(EXIT_ABORTED.into());
}

/// The process stopped with work not stored (the deadline passed, or a sink was down at the
/// stop); `specflow run` exits with [`EXIT_UNFINISHED`].
#[derive(Debug, thiserror::Error)]
#[error("stopped with work not stored ({0}); the next owner of those partitions replays it")]
pub struct Unfinished(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_counts_from_the_first_request() {
        let shutdown = Shutdown::new(Duration::from_secs(5));
        assert!(!shutdown.is_requested());
        shutdown.request();
        let deadline = shutdown.deadline();
        std::thread::sleep(Duration::from_millis(20));
        shutdown.request();
        assert!(shutdown.is_requested());
        assert_eq!(
            shutdown.deadline(),
            deadline,
            "a second request moves nothing"
        );
        assert!(shutdown.remaining() <= Duration::from_secs(5));
        assert!(shutdown.remaining() > Duration::from_secs(4));
    }

    #[test]
    fn the_margin_leaves_room_for_the_consumer_close() {
        assert!(CLOSE_GRACE < DEADLINE_MARGIN);
    }
}

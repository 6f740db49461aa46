//! Stop requests: SIGTERM/SIGINT cancel a token; a second signal aborts at once.

use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Which signal asked us to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopSignal {
    /// SIGTERM (systemd stop, Kubernetes pod deletion).
    Terminate,
    /// SIGINT (Ctrl-C).
    Interrupt,
}

async fn next_signal() -> StopSignal {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => StopSignal::Terminate,
        _ = int.recv() => StopSignal::Interrupt,
    }
}

/// Cancels `token` on the first SIGTERM/SIGINT and exits the process (code 130) on a second.
pub fn install(token: CancellationToken) {
    tokio::spawn(async move {
        let first = next_signal().await;
        info!(signal = ?first, "Stop requested; draining (send the signal again to abort).");
        token.cancel();
        let second = next_signal().await;
        error!(signal = ?second, "Second stop signal; aborting without draining.");
        std::process::exit(130);
    });
}

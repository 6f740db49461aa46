//! systemd integration (`Type=notify`): READY once serving (the worker consuming, the gateway
//! listening), with what it does as the STATUS, STOPPING when draining, and
//! WATCHDOG heartbeats from the processing loop. Outside systemd every call is a no-op.

use sd_notify::NotifyState;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sends systemd notifications; throttles watchdog pings to a third of the watchdog interval.
pub struct Notifier {
    watchdog: Option<Duration>,
    last_ping: Mutex<Option<Instant>>,
}

impl Default for Notifier {
    fn default() -> Self {
        Self::from_env()
    }
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` / `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Self {
        Self {
            watchdog: sd_notify::watchdog_enabled(),
            last_ping: Mutex::new(None),
        }
    }

    /// The service is ready; `status` says what it does (`consuming`, `listening`).
    pub fn ready(&self, status: &str) {
        let _ = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(status)]);
    }

    /// The worker is draining before exit.
    pub fn stopping(&self) {
        let _ = sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
    }

    /// The processing loop is alive; pings the watchdog when it is due.
    pub fn alive(&self) {
        let Some(interval) = self.watchdog else {
            return;
        };
        let mut last = self.last_ping.lock().expect("watchdog lock");
        if last.is_none_or(|t| t.elapsed() >= interval / 3) {
            let _ = sd_notify::notify(&[NotifyState::Watchdog]);
            *last = Some(Instant::now());
        }
    }
}

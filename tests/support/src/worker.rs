//! A `specflow run` child process. Dropping it kills the process, so a failing test or an
//! aborted benchmark phase never leaves a worker running against the shared services.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A running `specflow run --config …` process.
#[derive(Debug)]
pub struct WorkerProcess {
    /// The process.
    child: Child,
}

impl WorkerProcess {
    /// Starts `binary run --config config` with `env` added to the environment; its stdout and
    /// stderr (the log) are appended to `log`, stdin is closed.
    pub fn start<K, V>(
        binary: &Path,
        config: &Path,
        log: &Path,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> std::io::Result<Self>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        let mut command = Command::new(binary);
        command
            .args(["run", "--config"])
            .arg(config)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        Ok(Self {
            child: command.spawn()?,
        })
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Sends SIGTERM (the worker drains and exits).
    pub fn sigterm(&self) -> std::io::Result<()> {
        self.signal("TERM")
    }

    /// Sends the signal `name` (`TERM`, `STOP`, `CONT`, ...).
    pub fn signal(&self, name: &str) -> std::io::Result<()> {
        Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(drop)
    }

    /// Polls every 100 ms until the process exits (its status) or `within` passes (`None`).
    pub fn wait_within(&mut self, within: Duration) -> std::io::Result<Option<ExitStatus>> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGKILL, no drain; waits for the process to be gone.
    pub fn kill(&mut self) -> std::io::Result<()> {
        if self.child.try_wait()?.is_none() {
            self.child.kill()?;
        }
        self.child.wait().map(drop)
    }
}

impl Drop for WorkerProcess {
    /// Kills the process if it still runs.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A worker process started again whenever it exits, as its supervisor would (systemd's
/// `Restart=on-failure`, Kubernetes): a worker exits when its consumer fails fatally (a static
/// member fenced after a session timeout, for example) and relies on this.
pub struct Supervised {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u32>>,
}

impl Supervised {
    /// Runs `start()` now and again each time the process it returned exits.
    pub fn start(mut start: impl FnMut() -> WorkerProcess + Send + 'static) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut restarts = 0;
            let mut worker = start();
            loop {
                if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = worker.sigterm();
                    if !matches!(worker.wait_within(Duration::from_secs(30)), Ok(Some(_))) {
                        let _ = worker.kill();
                    }
                    return restarts;
                }
                if let Ok(Some(status)) = worker.try_wait() {
                    eprintln!("supervisor: the worker exited ({status}); starting it again");
                    restarts += 1;
                    worker = start();
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the worker (SIGTERM, SIGKILL after 30 s); returns how often it was restarted.
    pub fn stop(mut self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or(0)
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

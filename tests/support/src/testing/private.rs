//! A private instance of `scripts/services.sh`: its own state directory and ports, for tests
//! that restart or cold-start a broker without disturbing the shared services.

use std::path::Path;

/// A private Kafka (and MongoDB, if started) on its own ports; `down` (stopped, data deleted)
/// when dropped, also when the test fails.
pub struct PrivateServices {
    state: tempfile::TempDir,
    kafka_port: u16,
}

impl PrivateServices {
    /// A private instance whose broker listens on `kafka_port` (its controller on the next
    /// port, MongoDB on the one after). Nothing is started yet.
    pub fn new(kafka_port: u16) -> Self {
        Self {
            state: tempfile::tempdir().expect("state dir"),
            kafka_port,
        }
    }

    /// The broker's address.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.kafka_port)
    }

    /// The state directory (pidfiles, logs, data).
    pub fn state(&self) -> &Path {
        self.state.path()
    }

    /// Runs `scripts/services.sh ARGS` against this instance; panics if it fails.
    pub fn run(&self, args: &[&str]) {
        let status = self
            .command(args)
            .status()
            .expect("run scripts/services.sh");
        assert!(status.success(), "scripts/services.sh {args:?} failed");
    }

    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut command = std::process::Command::new("bash");
        command
            .arg(super::repository_root().join("scripts/services.sh"))
            .args(args)
            .env("SPECFLOW_STATE_DIR", self.state.path())
            .env("SPECFLOW_KAFKA_PORT", self.kafka_port.to_string())
            .env(
                "SPECFLOW_KAFKA_CONTROLLER_PORT",
                (self.kafka_port + 1).to_string(),
            )
            .env("SPECFLOW_MONGO_PORT", (self.kafka_port + 2).to_string())
            .env("SPECFLOW_KAFKA_HEAP_OPTS", "-Xms256m -Xmx512m");
        command
    }
}

impl Drop for PrivateServices {
    fn drop(&mut self) {
        let _ = self.command(&["down"]).status();
    }
}

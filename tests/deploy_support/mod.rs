//! Shared by the tests of the deployment files under `deploy/` (`deploy_systemd`,
//! `deploy_k8s`, `deploy_container`): the files' paths, the ports and config path the crate
//! defines, loading a config as `specflow run --config FILE` does, and one reader per format:
//! Kubernetes manifests ([`k8s`], parsed with `serde_yaml_ng`), systemd units ([`systemd`])
//! and the Dockerfile ([`dockerfile`]). Every failure names the file and the field.
// Each test crate uses a different part of this module.
#![allow(dead_code)]

pub mod dockerfile;
pub mod k8s;
pub mod systemd;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use specflow::config::Settings;
use specflow::gateway::config::GatewayConfig;
use specflow::telemetry::http::HttpConfig;

pub const K8S_DIR: &str = "deploy/k8s";
pub const KUSTOMIZATION: &str = "deploy/k8s/kustomization.yaml";
pub const DOCKERFILE: &str = "deploy/Dockerfile";
pub const UNIT: &str = "deploy/systemd/specflow.service";
pub const TEMPLATE_UNIT: &str = "deploy/systemd/specflow@.service";
pub const ENV_EXAMPLE: &str = "deploy/systemd/specflow.env.example";
pub const GATEWAY_UNIT: &str = "deploy/systemd/specflow-gateway.service";
pub const GATEWAY_ENV_EXAMPLE: &str = "deploy/systemd/gateway.env.example";
/// The worker's Deployment and metrics Service.
pub const WORKER: &str = "specflow";
/// The gateway's Deployment, Service and HorizontalPodAutoscaler.
pub const GATEWAY: &str = "specflow-gateway";
/// The gateway's manifests, which the kustomization must list.
pub const GATEWAY_FILES: [&str; 3] = [
    "gateway-deployment.yaml",
    "gateway-service.yaml",
    "gateway-hpa.yaml",
];
/// Seconds the gateway may take after SIGTERM (finish open requests, flush the producer).
pub const GATEWAY_STOP_SECS: u64 = 30;

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, by its path relative to the root.
pub fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

/// The port of `HttpConfig::default().address`, which every manifest must use.
pub fn http_port() -> u64 {
    let address: SocketAddr = HttpConfig::default()
        .address
        .parse()
        .expect("HttpConfig::default().address is ip:port");
    u64::from(address.port())
}

/// The port of `GatewayConfig::default().address`, which the gateway's manifests must use.
pub fn gateway_port() -> u64 {
    let address: SocketAddr = GatewayConfig::default()
        .address
        .parse()
        .expect("GatewayConfig::default().address is ip:port");
    u64::from(address.port())
}

/// Problems as one line each, for failure messages.
pub fn listed(problems: &[specflow::validation::Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads TOML text the way `specflow run --config FILE` does, with `env` as the environment.
pub fn load_toml(text: &str, env: Vec<(String, String)>, place: &str) -> Settings {
    let mut file = tempfile::Builder::new()
        .suffix(".toml")
        .tempfile()
        .expect("temporary file");
    file.write_all(text.as_bytes())
        .expect("write temporary file");
    file.flush().expect("flush temporary file");
    Settings::load_with_env(Some(file.path()), env)
        .unwrap_or_else(|e| panic!("{place}: does not load: {e}"))
}

/// Whether `words` hold `--config PATH`.
pub fn passes_config(words: &[&str], path: &str) -> bool {
    words.windows(2).any(|w| w[0] == "--config" && w[1] == path)
}

/// The dotted paths, sorted, of every key of TOML `text` whose name ends with `suffix`, in every
/// table (inline and array tables included); panics naming `place` when `text` is not TOML.
pub fn toml_keys_ending_with(text: &str, suffix: &str, place: &str) -> Vec<String> {
    fn walk(value: &toml::Value, path: &str, suffix: &str, found: &mut Vec<String>) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let path = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    if key.ends_with(suffix) {
                        found.push(path.clone());
                    }
                    walk(value, &path, suffix, found);
                }
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    walk(item, &format!("{path}[{i}]"), suffix, found);
                }
            }
            _ => {}
        }
    }
    let table: toml::Table =
        toml::from_str(text).unwrap_or_else(|e| panic!("{place}: not valid TOML: {e}"));
    let mut found = Vec::new();
    walk(&toml::Value::Table(table), "", suffix, &mut found);
    found.sort();
    found
}

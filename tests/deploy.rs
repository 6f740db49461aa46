//! The deployment files under `deploy/` agree with the crate: the HTTP port and probe paths,
//! the config path, the ConfigMap's `specflow.toml` (it loads and validates), the drain
//! deadline against the grace periods, the KEDA trigger against `[source]`, the
//! kustomization's resource list, the Dockerfile and the systemd units; for the gateway
//! (`specflow gateway`), its unit, Deployment, Service, HPA and token Secret.
//! Every failure names the file and the field.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;

use specflow::config::{DEFAULT_CONFIG_PATH, Settings, ShutdownConfig};
use specflow::gateway::GatewayConfig;
use specflow::telemetry::http::HttpConfig;

const K8S_DIR: &str = "deploy/k8s";
const KUSTOMIZATION: &str = "deploy/k8s/kustomization.yaml";
const DOCKERFILE: &str = "deploy/Dockerfile";
const UNIT: &str = "deploy/systemd/specflow.service";
const TEMPLATE_UNIT: &str = "deploy/systemd/specflow@.service";
const ENV_EXAMPLE: &str = "deploy/systemd/specflow.env.example";
const GATEWAY_UNIT: &str = "deploy/systemd/specflow-gateway.service";
const GATEWAY_ENV_EXAMPLE: &str = "deploy/systemd/gateway.env.example";
/// The worker's Deployment and metrics Service.
const WORKER: &str = "specflow";
/// The gateway's Deployment, Service and HorizontalPodAutoscaler.
const GATEWAY: &str = "specflow-gateway";
/// The gateway's manifests, which the kustomization must list.
const GATEWAY_FILES: [&str; 3] = [
    "gateway-deployment.yaml",
    "gateway-service.yaml",
    "gateway-hpa.yaml",
];
/// Seconds the gateway may take after SIGTERM (finish open requests, flush the producer).
const GATEWAY_STOP_SECS: u64 = 30;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A file of the repository, by its path relative to the root.
fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: cannot read: {e}"))
}

/// The port of `HttpConfig::default().address`, which every manifest must use.
fn http_port() -> u64 {
    let address: SocketAddr = HttpConfig::default()
        .address
        .parse()
        .expect("HttpConfig::default().address is ip:port");
    u64::from(address.port())
}

/// The port of `GatewayConfig::default().address`, which the gateway's manifests must use.
fn gateway_port() -> u64 {
    let address: SocketAddr = GatewayConfig::default()
        .address
        .parse()
        .expect("GatewayConfig::default().address is ip:port");
    u64::from(address.port())
}

/// A whole number written as a YAML number or as a string ("1000").
fn as_u64(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// Problems as one line each, for failure messages.
fn listed(problems: &[specflow::validation::Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// One Kubernetes object and the file it came from.
struct Object {
    file: String,
    doc: Value,
}

impl Object {
    fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("?")
    }

    fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("?")
    }

    /// Where a failure is: `FILE: Kind name: field`.
    fn place(&self, field: &str) -> String {
        format!("{}: {} {}: {field}", self.file, self.kind(), self.name())
    }

    /// The value at a JSON pointer such as `/spec/replicas`; panics naming file and field.
    fn at(&self, pointer: &str) -> &Value {
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{} is missing", self.place(pointer)))
    }

    fn str_at(&self, pointer: &str) -> &str {
        let value = self.at(pointer);
        value
            .as_str()
            .unwrap_or_else(|| panic!("{} = {value} is not a string", self.place(pointer)))
    }

    fn u64_at(&self, pointer: &str) -> u64 {
        let value = self.at(pointer);
        as_u64(value)
            .unwrap_or_else(|| panic!("{} = {value} is not a whole number", self.place(pointer)))
    }

    fn array_at(&self, pointer: &str) -> &[Value] {
        let value = self.at(pointer);
        value
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("{} = {value} is not a list", self.place(pointer)))
    }

    /// The index of the first element of the list at `pointer` whose `key` is `wanted`.
    fn index_where(&self, pointer: &str, key: &str, wanted: &str) -> usize {
        self.array_at(pointer)
            .iter()
            .position(|item| item[key].as_str() == Some(wanted))
            .unwrap_or_else(|| panic!("{} has no entry with {key} = {wanted}", self.place(pointer)))
    }

    /// A metadata annotation (keys hold '/', which JSON pointers would need escaped).
    fn annotation(&self, key: &str) -> &str {
        self.doc["metadata"]["annotations"][key]
            .as_str()
            .unwrap_or_else(|| {
                panic!(
                    "{} is missing",
                    self.place(&format!("metadata.annotations[{key}]"))
                )
            })
    }
}

/// The manifests under deploy/k8s.
struct K8s {
    /// YAML files in the directory other than the kustomization.
    files: BTreeSet<String>,
    objects: Vec<Object>,
}

impl K8s {
    fn load() -> Self {
        let dir = repo().join(K8S_DIR);
        let entries =
            std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{K8S_DIR}: cannot list: {e}"));
        let mut files = BTreeSet::new();
        let mut objects = Vec::new();
        for entry in entries {
            let name = entry
                .expect("directory entry")
                .file_name()
                .to_string_lossy()
                .into_owned();
            let is_yaml = name.ends_with(".yaml") || name.ends_with(".yml");
            if !is_yaml || name.starts_with("kustomization.") {
                continue;
            }
            let file = format!("{K8S_DIR}/{name}");
            let text = read(&file);
            for (i, document) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
                let doc = Value::deserialize(document)
                    .unwrap_or_else(|e| panic!("{file}: document {i} is not valid YAML: {e}"));
                if doc.is_null() {
                    continue;
                }
                for field in ["apiVersion", "kind"] {
                    assert!(
                        doc[field].is_string(),
                        "{file}: document {i}: {field} is missing"
                    );
                }
                assert!(
                    doc["metadata"]["name"].is_string(),
                    "{file}: document {i}: metadata.name is missing"
                );
                objects.push(Object {
                    file: file.clone(),
                    doc,
                });
            }
            files.insert(name);
        }
        assert!(!objects.is_empty(), "{K8S_DIR}: no manifests found");
        Self { files, objects }
    }

    /// The only object of `kind`.
    fn one(&self, kind: &str) -> &Object {
        let found: Vec<&Object> = self.objects.iter().filter(|o| o.kind() == kind).collect();
        assert_eq!(
            found.len(),
            1,
            "{K8S_DIR}: expected exactly one {kind}, found {}",
            found.len()
        );
        found[0]
    }

    /// The object of `kind` called `name`; `from` says who refers to it.
    fn named(&self, kind: &str, name: &str, from: &str) -> &Object {
        self.objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
            .unwrap_or_else(|| {
                panic!("{from} refers to {kind} {name}, which no file in {K8S_DIR} defines")
            })
    }

    /// The worker's Deployment.
    fn deployment(&self) -> &Object {
        self.named("Deployment", WORKER, "tests/deploy.rs (the worker)")
    }

    /// The gateway's Deployment.
    fn gateway(&self) -> &Object {
        self.named("Deployment", GATEWAY, "tests/deploy.rs (the gateway)")
    }
}

/// The JSON pointer of the Deployment's `specflow` container.
fn container(deployment: &Object) -> String {
    let index = deployment.index_where("/spec/template/spec/containers", "name", "specflow");
    format!("/spec/template/spec/containers/{index}")
}

/// The container port that `port` (a number or a port name) designates.
fn resolve_port(deployment: &Object, container: &str, port: &Value, place: &str) -> u64 {
    if let Some(number) = port.as_u64() {
        return number;
    }
    let name = port
        .as_str()
        .unwrap_or_else(|| panic!("{place} = {port} is neither a port number nor a port name"));
    let ports = format!("{container}/ports");
    let index = deployment
        .array_at(&ports)
        .iter()
        .position(|p| p["name"].as_str() == Some(name))
        .unwrap_or_else(|| {
            panic!(
                "{place} = {name}: {} has no port of that name",
                deployment.place(&ports)
            )
        });
    deployment.u64_at(&format!("{ports}/{index}/containerPort"))
}

/// A security setting of the container, else of the pod.
fn security<'a>(deployment: &'a Object, container: &str, field: &str) -> Option<&'a Value> {
    deployment
        .doc
        .pointer(&format!("{container}/securityContext/{field}"))
        .or_else(|| {
            deployment
                .doc
                .pointer(&format!("/spec/template/spec/securityContext/{field}"))
        })
}

/// The config the worker's Deployment mounts at DEFAULT_CONFIG_PATH: its ConfigMap and the
/// TOML text.
fn mounted_config(k8s: &K8s) -> (&Object, String) {
    mounted_config_of(k8s, k8s.deployment())
}

/// The config `dep` mounts at DEFAULT_CONFIG_PATH: its ConfigMap and the TOML text.
fn mounted_config_of<'a>(k8s: &'a K8s, dep: &Object) -> (&'a Object, String) {
    let c = container(dep);
    let mounts = format!("{c}/volumeMounts");
    let mount = dep.index_where(&mounts, "mountPath", DEFAULT_CONFIG_PATH);
    let volume_name = dep.str_at(&format!("{mounts}/{mount}/name"));
    // A whole-directory mount at the file path would hide nothing useful: mount one key.
    let sub_path = dep.str_at(&format!("{mounts}/{mount}/subPath"));
    let volumes = "/spec/template/spec/volumes";
    let volume = dep.index_where(volumes, "name", volume_name);
    let config_map = format!("{volumes}/{volume}/configMap");
    let map_name = dep.str_at(&format!("{config_map}/name"));
    let items = format!("{config_map}/items");
    let key = if dep.doc.pointer(&items).is_some() {
        let item = dep.index_where(&items, "path", sub_path);
        dep.str_at(&format!("{items}/{item}/key")).to_string()
    } else {
        sub_path.to_string()
    };
    let map = k8s.named("ConfigMap", map_name, &dep.place(&config_map));
    let pointer = format!("/data/{}", key.replace('~', "~0").replace('/', "~1"));
    (map, map.str_at(&pointer).to_string())
}

/// The worker container's environment as the process would see it.
fn container_env(k8s: &K8s) -> Vec<(String, String)> {
    container_env_of(k8s, k8s.deployment())
}

/// The `specflow` container's environment in `dep` as the process would see it: literal
/// values, and `secretKeyRef` values from the Secret manifest's `stringData` (its placeholders).
fn container_env_of(k8s: &K8s, dep: &Object) -> Vec<(String, String)> {
    let env = format!("{}/env", container(dep));
    let mut out = Vec::new();
    let Some(entries) = dep.doc.pointer(&env).and_then(Value::as_array) else {
        return out;
    };
    for (i, entry) in entries.iter().enumerate() {
        let name = dep.str_at(&format!("{env}/{i}/name")).to_string();
        if let Some(value) = entry["value"].as_str() {
            out.push((name, value.to_string()));
        } else if entry.pointer("/valueFrom/secretKeyRef").is_some() {
            let reference = format!("{env}/{i}/valueFrom/secretKeyRef");
            let secret_name = dep.str_at(&format!("{reference}/name"));
            let key = dep.str_at(&format!("{reference}/key"));
            let secret = k8s.named("Secret", secret_name, &dep.place(&reference));
            if let Some(value) = secret.doc["stringData"][key].as_str() {
                out.push((name, value.to_string()));
            } else {
                let optional =
                    entry["valueFrom"]["secretKeyRef"]["optional"].as_bool() == Some(true);
                assert!(
                    optional || secret.doc["data"][key].is_string(),
                    "{}: key {key} is missing from stringData and data",
                    secret.place("stringData")
                );
            }
        }
    }
    out
}

/// Loads TOML text the way `specflow run --config FILE` does, with `env` as the environment.
fn load_toml(text: &str, env: Vec<(String, String)>, place: &str) -> Settings {
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

/// The ConfigMap's config with the worker Deployment's environment applied, as a pod runs it.
fn effective_settings(k8s: &K8s) -> Settings {
    effective_settings_of(k8s, k8s.deployment())
}

/// The config `dep` mounts with `dep`'s environment applied, as its pods run it.
fn effective_settings_of(k8s: &K8s, dep: &Object) -> Settings {
    let (map, text) = mounted_config_of(k8s, dep);
    let place = format!("{} with the environment of {}", map.place("data"), dep.file);
    let settings = load_toml(&text, container_env_of(k8s, dep), &place);
    let problems = settings.validate();
    assert!(
        problems.is_empty(),
        "{place}: invalid settings:\n{}",
        listed(&problems)
    );
    settings
}

#[test]
fn every_manifest_parses_and_carries_the_name_label() {
    let k8s = K8s::load();
    for object in &k8s.objects {
        assert_eq!(
            object.doc["metadata"]["labels"]["app.kubernetes.io/name"].as_str(),
            Some("specflow"),
            "{}",
            object.place("metadata.labels[app.kubernetes.io/name]")
        );
    }
    for kind in [
        "ConfigMap",
        "Secret",
        "PodDisruptionBudget",
        "ScaledObject",
        "HorizontalPodAutoscaler",
    ] {
        k8s.one(kind);
    }
    for kind in ["Deployment", "Service"] {
        let names: BTreeSet<&str> = k8s
            .objects
            .iter()
            .filter(|o| o.kind() == kind)
            .map(Object::name)
            .collect();
        assert_eq!(
            names,
            BTreeSet::from([WORKER, GATEWAY]),
            "{K8S_DIR}: the {kind} objects must be the worker's and the gateway's"
        );
    }
}

#[test]
fn kustomization_lists_every_manifest() {
    let k8s = K8s::load();
    let doc: Value = serde_yaml_ng::from_str(&read(KUSTOMIZATION))
        .unwrap_or_else(|e| panic!("{KUSTOMIZATION}: not valid YAML: {e}"));
    let resources = doc["resources"]
        .as_array()
        .unwrap_or_else(|| panic!("{KUSTOMIZATION}: resources is missing or not a list"));
    let listed: BTreeSet<String> = resources
        .iter()
        .map(|r| {
            r.as_str()
                .unwrap_or_else(|| panic!("{KUSTOMIZATION}: resources entry {r} is not a string"))
                .trim_start_matches("./")
                .to_string()
        })
        .collect();
    let missing: Vec<&String> = k8s.files.difference(&listed).collect();
    let extra: Vec<&String> = listed.difference(&k8s.files).collect();
    assert!(
        missing.is_empty(),
        "{KUSTOMIZATION}: resources does not list {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "{KUSTOMIZATION}: resources lists {extra:?}, which are not manifests in {K8S_DIR}"
    );
    for file in GATEWAY_FILES {
        assert!(
            listed.contains(file),
            "{KUSTOMIZATION}: resources does not list the gateway's {file}"
        );
    }
}

/// Liveness `/healthz`, readiness `/readyz` (and a startup probe on `/healthz`, when there is
/// one) of container `c`, each on `port`.
fn assert_probes(dep: &Object, c: &str, port: u64, port_is: &str) {
    for (probe, path, required) in [
        ("livenessProbe", "/healthz", true),
        ("readinessProbe", "/readyz", true),
        ("startupProbe", "/healthz", false),
    ] {
        let probe = format!("{c}/{probe}");
        if !required && dep.doc.pointer(&probe).is_none() {
            continue;
        }
        let get = format!("{probe}/httpGet");
        assert_eq!(
            dep.str_at(&format!("{get}/path")),
            path,
            "{}",
            dep.place(&format!("{get}/path"))
        );
        let field = format!("{get}/port");
        let resolved = resolve_port(dep, c, dep.at(&field), &dep.place(&field));
        assert_eq!(resolved, port, "{} must be {port_is}", dep.place(&field));
    }
}

#[test]
fn deployment_port_and_probes_match_the_http_endpoint() {
    let k8s = K8s::load();
    let dep = k8s.deployment();
    let c = container(dep);
    let port = dep.index_where(&format!("{c}/ports"), "name", "http");
    let container_port = dep.u64_at(&format!("{c}/ports/{port}/containerPort"));
    assert_eq!(
        container_port,
        http_port(),
        "{} must equal the port of HttpConfig::default().address",
        dep.place(&format!("{c}/ports/{port}/containerPort"))
    );
    assert_probes(
        dep,
        &c,
        http_port(),
        "the port of HttpConfig::default().address",
    );
}

#[test]
fn deployment_mounts_the_config_at_the_default_path() {
    let k8s = K8s::load();
    let dep = k8s.deployment();
    let c = container(dep);
    let (_, text) = mounted_config(&k8s);
    assert!(
        !text.trim().is_empty(),
        "the ConfigMap's specflow.toml is empty"
    );
    // The process must be told to read that path (the image's CMD does too, but say it here).
    let args: Vec<&str> = dep
        .doc
        .pointer(&format!("{c}/args"))
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let env = container_env(&k8s);
    let by_env = env
        .iter()
        .any(|(k, v)| k == "SPECFLOW_CONFIG" && v == DEFAULT_CONFIG_PATH);
    let by_args = args
        .windows(2)
        .any(|w| w[0] == "--config" && w[1] == DEFAULT_CONFIG_PATH);
    assert!(
        by_args || by_env,
        "{} = {args:?} must pass --config {DEFAULT_CONFIG_PATH} (or set SPECFLOW_CONFIG)",
        dep.place(&format!("{c}/args"))
    );
    if !args.is_empty() {
        assert_eq!(args[0], "run", "{}", dep.place(&format!("{c}/args/0")));
    }
}

#[test]
fn configmap_config_loads_and_validates() {
    let k8s = K8s::load();
    let (map, text) = mounted_config(&k8s);
    let place = map.place("data");
    let file_keys: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, _)| k.trim()))
        .filter(|k| k.ends_with("_file"))
        .collect();
    assert!(
        file_keys.is_empty(),
        "{place}: sets {file_keys:?}; validation needs those files, which the pod does not mount"
    );
    let settings = load_toml(&text, Vec::<(String, String)>::new(), &place);
    let problems = settings.validate();
    assert!(
        problems.is_empty(),
        "{place}: invalid settings:\n{}",
        listed(&problems)
    );
    let address: SocketAddr = settings
        .http
        .address
        .parse()
        .unwrap_or_else(|e| panic!("{place}: http.address: {e}"));
    assert_eq!(
        u64::from(address.port()),
        http_port(),
        "{place}: http.address port"
    );
    assert!(
        address.ip().is_unspecified(),
        "{place}: http.address = {address} must listen on all interfaces in a pod (0.0.0.0)"
    );

    // As the pod runs it: the env overrides must name real keys and keep the config valid.
    let effective = effective_settings(&k8s);
    let address: SocketAddr = effective.http.address.parse().expect("validated address");
    assert_eq!(
        u64::from(address.port()),
        http_port(),
        "{}: SPECFLOW__HTTP__ADDRESS port",
        k8s.deployment().place("env")
    );
    assert!(
        address.ip().is_unspecified(),
        "{}: SPECFLOW__HTTP__ADDRESS must be 0.0.0.0",
        k8s.deployment().place("env")
    );
}

#[test]
fn grace_period_exceeds_the_drain_deadline() {
    let k8s = K8s::load();
    let dep = k8s.deployment();
    let field = "/spec/template/spec/terminationGracePeriodSeconds";
    let grace = dep.u64_at(field);
    let margin = specflow::shutdown::DEADLINE_MARGIN.as_secs();
    let drain = effective_settings(&k8s).shutdown.drain_timeout_secs;
    assert!(
        grace > drain + margin,
        "{} = {grace} must exceed shutdown.drain_timeout_secs = {drain} of the ConfigMap's config plus the exit margin ({margin} s)",
        dep.place(field)
    );
    let default = ShutdownConfig::default().drain_timeout_secs;
    assert!(
        grace > default + margin,
        "{} = {grace} must exceed ShutdownConfig::default().drain_timeout_secs = {default} plus the exit margin ({margin} s)",
        dep.place(field)
    );
}

#[test]
fn deployments_run_unprivileged() {
    let k8s = K8s::load();
    for dep in [k8s.deployment(), k8s.gateway()] {
        assert_runs_unprivileged(dep);
    }
}

fn assert_runs_unprivileged(dep: &Object) {
    let c = container(dep);
    let place = |field: &str| dep.place(&format!("{c}/securityContext/{field} (or the pod's)"));
    assert_eq!(
        security(dep, &c, "runAsNonRoot"),
        Some(&Value::Bool(true)),
        "{}",
        place("runAsNonRoot")
    );
    let user = security(dep, &c, "runAsUser").and_then(Value::as_u64);
    assert!(
        matches!(user, Some(uid) if uid != 0),
        "{} = {user:?} must be a non-zero uid",
        place("runAsUser")
    );
    assert_eq!(
        security(dep, &c, "readOnlyRootFilesystem"),
        Some(&Value::Bool(true)),
        "{}",
        place("readOnlyRootFilesystem")
    );
    assert_eq!(
        security(dep, &c, "allowPrivilegeEscalation"),
        Some(&Value::Bool(false)),
        "{}",
        place("allowPrivilegeEscalation")
    );
    let drop = security(dep, &c, "capabilities")
        .and_then(|caps| caps["drop"].as_array())
        .is_some_and(|d| d.iter().any(|cap| cap.as_str() == Some("ALL")));
    assert!(drop, "{} must list ALL", place("capabilities.drop"));
    assert_eq!(
        security(dep, &c, "seccompProfile").map(|p| &p["type"]),
        Some(&Value::from("RuntimeDefault")),
        "{}",
        place("seccompProfile.type")
    );
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            let field = format!("{c}/resources/{kind}/{resource}");
            assert!(
                dep.doc.pointer(&field).is_some(),
                "{} is not set",
                dep.place(&field)
            );
        }
    }
}

/// Every key of the selector at `pointer` in `object` matches the Deployment's pod labels.
fn assert_selects_pods(object: &Object, pointer: &str, dep: &Object) {
    let selector = object
        .at(pointer)
        .as_object()
        .unwrap_or_else(|| panic!("{} is not a map", object.place(pointer)));
    assert!(!selector.is_empty(), "{} is empty", object.place(pointer));
    let labels = dep.at("/spec/template/metadata/labels");
    for (key, value) in selector {
        assert_eq!(
            &labels[key.as_str()],
            value,
            "{}: {key} = {value} does not match the pod labels of {}",
            object.place(pointer),
            dep.file
        );
    }
}

#[test]
fn selectors_match_the_pods() {
    let k8s = K8s::load();
    let dep = k8s.deployment();
    assert_selects_pods(dep, "/spec/selector/matchLabels", dep);
    assert_selects_pods(
        k8s.named("Service", WORKER, "tests/deploy.rs"),
        "/spec/selector",
        dep,
    );
    assert_selects_pods(
        k8s.one("PodDisruptionBudget"),
        "/spec/selector/matchLabels",
        dep,
    );
}

#[test]
fn service_exposes_the_metrics_port() {
    let k8s = K8s::load();
    let dep = k8s.deployment();
    let svc = k8s.named("Service", WORKER, "tests/deploy.rs");
    let index = svc.index_where("/spec/ports", "name", "http");
    let port = format!("/spec/ports/{index}/port");
    assert_eq!(svc.u64_at(&port), http_port(), "{}", svc.place(&port));
    let target = format!("/spec/ports/{index}/targetPort");
    if let Some(value) = svc.doc.pointer(&target) {
        let resolved = resolve_port(dep, &container(dep), value, &svc.place(&target));
        assert_eq!(resolved, http_port(), "{}", svc.place(&target));
    }
    assert_eq!(
        svc.annotation("prometheus.io/scrape"),
        "true",
        "{}",
        svc.place("metadata.annotations[prometheus.io/scrape]")
    );
    assert_eq!(
        svc.annotation("prometheus.io/port").parse::<u64>().ok(),
        Some(http_port()),
        "{}",
        svc.place("metadata.annotations[prometheus.io/port]")
    );
    assert_eq!(
        svc.annotation("prometheus.io/path"),
        "/metrics",
        "{}",
        svc.place("metadata.annotations[prometheus.io/path]")
    );
}

#[test]
fn pdb_allows_one_disruption() {
    let k8s = K8s::load();
    let pdb = k8s.one("PodDisruptionBudget");
    assert_eq!(
        pdb.u64_at("/spec/maxUnavailable"),
        1,
        "{}",
        pdb.place("/spec/maxUnavailable")
    );
}

#[test]
fn keda_trigger_matches_the_consumer_group() {
    let k8s = K8s::load();
    let dep = k8s.deployment();
    let keda = k8s.one("ScaledObject");
    let settings = effective_settings(&k8s);
    let target = "/spec/scaleTargetRef/name";
    assert_eq!(keda.str_at(target), dep.name(), "{}", keda.place(target));
    let index = keda.index_where("/spec/triggers", "type", "kafka");
    let meta = format!("/spec/triggers/{index}/metadata");
    for (field, expected, key) in [
        (
            "consumerGroup",
            &settings.source.group_id,
            "source.group_id",
        ),
        ("topic", &settings.source.topic, "source.topic"),
        ("bootstrapServers", &settings.kafka.brokers, "kafka.brokers"),
    ] {
        let pointer = format!("{meta}/{field}");
        assert_eq!(
            keda.str_at(&pointer),
            expected.as_str(),
            "{} must equal {key} of the ConfigMap's config",
            keda.place(&pointer)
        );
    }
    let lag = format!("{meta}/lagThreshold");
    assert!(
        keda.u64_at(&lag) > 0,
        "{} must be positive",
        keda.place(&lag)
    );
    if let Some(idle) = keda.doc.pointer(&format!("{meta}/allowIdleConsumers")) {
        assert!(
            idle.as_str() == Some("false") || idle.as_bool() == Some(false),
            "{} = {idle}: replicas beyond the partition count would sit idle",
            keda.place(&format!("{meta}/allowIdleConsumers"))
        );
    }
    let min = keda.u64_at("/spec/minReplicaCount");
    let max = keda.u64_at("/spec/maxReplicaCount");
    assert!(
        min >= 1,
        "{} must be at least 1",
        keda.place("/spec/minReplicaCount")
    );
    assert!(
        max >= min,
        "{} = {max} is below minReplicaCount = {min}",
        keda.place("/spec/maxReplicaCount")
    );
    let partitions = u64::try_from(settings.source.topic_partitions).unwrap_or(0);
    assert!(
        max <= partitions,
        "{} = {max} exceeds source.topic_partitions = {partitions}: the extra replicas would sit idle",
        keda.place("/spec/maxReplicaCount")
    );
}

/// The Dockerfile's instructions (continuations joined, comments dropped): (INSTRUCTION, args).
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read(DOCKERFILE).lines() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if let Some(head) = trimmed.strip_suffix('\\') {
            current.push_str(head);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (instruction, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((current.as_str(), ""));
        out.push((instruction.to_ascii_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

/// The arguments of every `instruction` among `instructions`.
fn args_of<'a>(instructions: &'a [(String, String)], instruction: &str) -> Vec<&'a str> {
    instructions
        .iter()
        .filter(|(i, _)| i == instruction)
        .map(|(_, a)| a.as_str())
        .collect()
}

#[test]
fn dockerfile_exposes_the_port_and_runs_as_non_root() {
    let all = dockerfile();
    let last_from = all
        .iter()
        .rposition(|(i, _)| i == "FROM")
        .unwrap_or_else(|| panic!("{DOCKERFILE}: no FROM"));
    let runtime = &all[last_from..];

    let exposed = args_of(runtime, "EXPOSE")
        .into_iter()
        .flat_map(|a| a.split_whitespace())
        .any(|p| p.split('/').next().and_then(|n| n.parse::<u64>().ok()) == Some(http_port()));
    assert!(
        exposed,
        "{DOCKERFILE}: EXPOSE of the final stage must include {}",
        http_port()
    );

    let user = args_of(runtime, "USER")
        .last()
        .map(|u| u.split(':').next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|| {
            panic!("{DOCKERFILE}: USER is not set in the final stage (it would run as root)")
        });
    assert!(
        user != "root" && user != "0",
        "{DOCKERFILE}: USER = {user} must not be root"
    );
    let k8s = K8s::load();
    let dep = k8s.deployment();
    if let (Ok(uid), Some(run_as)) = (
        user.parse::<u64>(),
        security(dep, &container(dep), "runAsUser").and_then(Value::as_u64),
    ) {
        assert_eq!(
            uid, run_as,
            "{DOCKERFILE}: USER differs from runAsUser in {}",
            dep.file
        );
    }

    let address = args_of(runtime, "ENV")
        .into_iter()
        .flat_map(|a| a.split_whitespace())
        .find_map(|kv| kv.strip_prefix("SPECFLOW__HTTP__ADDRESS="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| panic!("{DOCKERFILE}: ENV SPECFLOW__HTTP__ADDRESS is not set"));
    let address: SocketAddr = address
        .parse()
        .unwrap_or_else(|e| panic!("{DOCKERFILE}: ENV SPECFLOW__HTTP__ADDRESS = {address}: {e}"));
    assert_eq!(
        u64::from(address.port()),
        http_port(),
        "{DOCKERFILE}: ENV SPECFLOW__HTTP__ADDRESS port"
    );
    assert!(
        address.ip().is_unspecified(),
        "{DOCKERFILE}: ENV SPECFLOW__HTTP__ADDRESS must be 0.0.0.0:PORT"
    );

    let copies_config = args_of(runtime, "COPY")
        .into_iter()
        .any(|a| a.split_whitespace().next_back() == Some(DEFAULT_CONFIG_PATH));
    assert!(
        copies_config,
        "{DOCKERFILE}: no COPY to {DEFAULT_CONFIG_PATH} in the final stage"
    );
    let cmd = args_of(runtime, "CMD")
        .last()
        .map(|c| c.to_string())
        .unwrap_or_default();
    assert!(
        cmd.contains(DEFAULT_CONFIG_PATH) && cmd.contains("run"),
        "{DOCKERFILE}: CMD = {cmd} must run with --config {DEFAULT_CONFIG_PATH}"
    );
}

/// A unit file's `Key=Value` settings in order (comments and section headers skipped).
fn unit_settings(file: &str) -> Vec<(String, String)> {
    read(file)
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with('#') && !l.starts_with(';') && !l.starts_with('[')
        })
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// The last value set for `key` (later assignments win in systemd, for these keys).
fn unit_value<'a>(settings: &'a [(String, String)], key: &str) -> Option<&'a str> {
    settings
        .iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// A systemd time span in seconds: "45", "45s", "1min 30s", "2m"; None for others.
fn timespan_secs(text: &str) -> Option<f64> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0.0;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits].parse().ok()?;
        rest = rest[digits..].trim_start();
        let unit_len = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "" | "s" | "sec" | "second" | "seconds" => 1.0,
            "ms" | "msec" => 0.001,
            "us" | "usec" => 0.000_001,
            "m" | "min" | "minute" | "minutes" => 60.0,
            "h" | "hr" | "hour" | "hours" => 3600.0,
            _ => return None,
        };
        rest = rest[unit_len..].trim_start();
        total += number * scale;
    }
    Some(total)
}

#[test]
fn timespans_parse_like_systemd() {
    assert_eq!(timespan_secs("45"), Some(45.0));
    assert_eq!(timespan_secs("45s"), Some(45.0));
    assert_eq!(timespan_secs("1min 30s"), Some(90.0));
    assert_eq!(timespan_secs("2m"), Some(120.0));
    assert_eq!(timespan_secs("infinity"), None);
}

#[test]
fn systemd_units_outlast_the_drain_and_use_the_default_config() {
    let drain = ShutdownConfig::default().drain_timeout_secs;
    let config_dir = Path::new(DEFAULT_CONFIG_PATH)
        .parent()
        .and_then(Path::to_str)
        .expect("DEFAULT_CONFIG_PATH has a parent directory");
    for (file, config) in [
        (UNIT, DEFAULT_CONFIG_PATH.to_string()),
        (TEMPLATE_UNIT, format!("{config_dir}/%i.toml")),
    ] {
        let settings = unit_settings(file);
        let stop = unit_value(&settings, "TimeoutStopSec")
            .unwrap_or_else(|| panic!("{file}: TimeoutStopSec is not set"));
        let secs = timespan_secs(stop).unwrap_or_else(|| {
            panic!("{file}: TimeoutStopSec = {stop} is not a time span this test reads")
        });
        let margin = specflow::shutdown::DEADLINE_MARGIN.as_secs();
        assert!(
            secs > (drain + margin) as f64,
            "{file}: TimeoutStopSec = {stop} must exceed ShutdownConfig::default().drain_timeout_secs = {drain} plus the exit margin ({margin} s)"
        );
        assert_eq!(
            unit_value(&settings, "Type"),
            Some("notify"),
            "{file}: Type"
        );
        assert!(
            unit_value(&settings, "WatchdogSec").is_some(),
            "{file}: WatchdogSec is not set"
        );
        for key in ["ExecStart", "ExecStartPre"] {
            let exec =
                unit_value(&settings, key).unwrap_or_else(|| panic!("{file}: {key} is not set"));
            let words: Vec<&str> = exec.split_whitespace().collect();
            assert!(
                words.first().is_some_and(|w| w.ends_with("/specflow")),
                "{file}: {key} = {exec} must start with the specflow binary"
            );
            let command = if key == "ExecStart" { "run" } else { "check" };
            assert_eq!(
                words.get(1).copied(),
                Some(command),
                "{file}: {key} = {exec}"
            );
            assert!(
                words
                    .windows(2)
                    .any(|w| w[0] == "--config" && w[1] == config),
                "{file}: {key} = {exec} must pass --config {config}"
            );
        }
    }
    assert!(
        read(TEMPLATE_UNIT).contains("SPECFLOW__HTTP__ADDRESS"),
        "{TEMPLATE_UNIT}: must tell how to give each instance its own port (SPECFLOW__HTTP__ADDRESS)"
    );
}

#[test]
fn env_example_names_real_keys() {
    // Every SPECFLOW__ line, commented out or not, must name a real key with a valid value.
    let env: Vec<(String, String)> = read(ENV_EXAMPLE)
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter(|l| l.starts_with("SPECFLOW__"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(!env.is_empty(), "{ENV_EXAMPLE}: no SPECFLOW__ lines");
    let settings = Settings::load_with_env(None, env)
        .unwrap_or_else(|e| panic!("{ENV_EXAMPLE}: does not load: {e}"));
    let problems = settings.validate();
    assert!(
        problems.is_empty(),
        "{ENV_EXAMPLE}: invalid settings:\n{}",
        listed(&problems)
    );
}

// ---- the gateway (`specflow gateway`) ----

/// Whether the selector at `pointer` in `object` selects the pods of `dep`.
fn selects(object: &Object, pointer: &str, dep: &Object) -> bool {
    let labels = dep.at("/spec/template/metadata/labels");
    object
        .at(pointer)
        .as_object()
        .unwrap_or_else(|| panic!("{} is not a map", object.place(pointer)))
        .iter()
        .all(|(key, value)| &labels[key.as_str()] == value)
}

/// The index of the env entry `name` of `dep`'s `specflow` container.
fn env_index(dep: &Object, name: &str) -> usize {
    dep.index_where(&format!("{}/env", container(dep)), "name", name)
}

/// A Kubernetes CPU quantity ("250m", "1", "0.5") in millicores.
fn millicores(quantity: &Value) -> Option<u64> {
    let text = match quantity {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => n.to_string(),
        _ => return None,
    };
    if let Some(milli) = text.strip_suffix('m') {
        return milli.parse().ok();
    }
    let cores: f64 = text.parse().ok()?;
    (cores.is_finite() && cores >= 0.0).then(|| (cores * 1000.0).round() as u64)
}

#[test]
fn cpu_quantities_parse_like_kubernetes() {
    assert_eq!(millicores(&Value::from("250m")), Some(250));
    assert_eq!(millicores(&Value::from("1")), Some(1000));
    assert_eq!(millicores(&Value::from(0.5)), Some(500));
    assert_eq!(millicores(&Value::from(2)), Some(2000));
    assert_eq!(millicores(&Value::from("lots")), None);
}

#[test]
fn gateway_unit_runs_the_gateway_with_the_worker_hardening() {
    let settings = unit_settings(GATEWAY_UNIT);
    let file = GATEWAY_UNIT;
    for key in ["ExecStart", "ExecStartPre"] {
        let exec = unit_value(&settings, key).unwrap_or_else(|| panic!("{file}: {key} is not set"));
        let words: Vec<&str> = exec.split_whitespace().collect();
        assert_eq!(
            words.first().copied(),
            Some("/usr/bin/specflow"),
            "{file}: {key} = {exec} must run /usr/bin/specflow"
        );
        let command = if key == "ExecStart" {
            "gateway"
        } else {
            "check"
        };
        assert_eq!(
            words.get(1).copied(),
            Some(command),
            "{file}: {key} = {exec}"
        );
        assert!(
            words
                .windows(2)
                .any(|w| w[0] == "--config" && w[1] == DEFAULT_CONFIG_PATH),
            "{file}: {key} = {exec} must pass --config {DEFAULT_CONFIG_PATH}"
        );
    }
    assert_eq!(
        unit_value(&settings, "Type"),
        Some("notify"),
        "{file}: Type"
    );
    // The gateway sends READY=1 but no watchdog pings: a WatchdogSec would kill it.
    assert!(
        unit_value(&settings, "WatchdogSec").is_none(),
        "{file}: WatchdogSec is set, but specflow gateway sends no watchdog pings"
    );
    assert_eq!(
        unit_value(&settings, "Restart"),
        Some("on-failure"),
        "{file}: Restart"
    );
    let stop = unit_value(&settings, "TimeoutStopSec")
        .unwrap_or_else(|| panic!("{file}: TimeoutStopSec is not set"));
    let secs = timespan_secs(stop).unwrap_or_else(|| {
        panic!("{file}: TimeoutStopSec = {stop} is not a time span this test reads")
    });
    assert!(
        secs > GATEWAY_STOP_SECS as f64,
        "{file}: TimeoutStopSec = {stop} must exceed the gateway's {GATEWAY_STOP_SECS} s shutdown"
    );
    let env_files: Vec<&str> = settings
        .iter()
        .filter(|(k, _)| k == "EnvironmentFile")
        .map(|(_, v)| v.as_str())
        .collect();
    assert!(
        env_files.contains(&"-/etc/specflow/gateway.env"),
        "{file}: EnvironmentFile = {env_files:?} must include -/etc/specflow/gateway.env"
    );
    let text = read(file);
    for needle in ["SPECFLOW__GATEWAY__TOKENS", "sha256sum"] {
        assert!(
            text.contains(needle),
            "{file}: must tell how to set the token digests ({needle})"
        );
    }

    // Same hardening and supervision as the worker: every setting of specflow.service but
    // those that name the worker's command, description or watchdog.
    let worker = unit_settings(UNIT);
    let own = [
        "Description",
        "ExecStart",
        "ExecStartPre",
        "WatchdogSec",
        "EnvironmentFile",
        "Environment",
    ];
    let missing: Vec<String> = worker
        .iter()
        .filter(|(k, _)| !own.contains(&k.as_str()))
        .filter(|pair| !settings.contains(pair))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    assert!(
        missing.is_empty(),
        "{file}: lacks these settings of {UNIT}: {missing:?}"
    );
}

#[test]
fn gateway_env_example_names_real_keys() {
    // The lines commented out are what a public gateway needs: they must load and validate.
    let env: Vec<(String, String)> = read(GATEWAY_ENV_EXAMPLE)
        .lines()
        .map(|l| l.trim().trim_start_matches('#').trim())
        .filter(|l| l.starts_with("SPECFLOW__"))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let names: BTreeSet<&str> = env.iter().map(|(k, _)| k.as_str()).collect();
    for name in ["SPECFLOW__GATEWAY__ADDRESS", "SPECFLOW__GATEWAY__TOKENS"] {
        assert!(
            names.contains(name),
            "{GATEWAY_ENV_EXAMPLE}: no {name} line"
        );
    }
    let settings = Settings::load_with_env(None, env)
        .unwrap_or_else(|e| panic!("{GATEWAY_ENV_EXAMPLE}: does not load: {e}"));
    let problems = settings.validate();
    assert!(
        problems.is_empty(),
        "{GATEWAY_ENV_EXAMPLE}: invalid settings:\n{}",
        listed(&problems)
    );
    let address: SocketAddr = settings.gateway.address.parse().expect("validated address");
    assert!(
        !address.ip().is_loopback() && !settings.gateway.tokens.is_empty(),
        "{GATEWAY_ENV_EXAMPLE}: must show a public address together with token digests"
    );
}

#[test]
fn gateway_deployment_runs_the_gateway_from_the_worker_image_and_config() {
    let k8s = K8s::load();
    let worker = k8s.deployment();
    let dep = k8s.gateway();
    let c = container(dep);
    let args: Vec<&str> = dep
        .array_at(&format!("{c}/args"))
        .iter()
        .map(|a| {
            a.as_str().unwrap_or_else(|| {
                panic!("{} = {a} is not a string", dep.place(&format!("{c}/args")))
            })
        })
        .collect();
    assert_eq!(
        args.first().copied(),
        Some("gateway"),
        "{}",
        dep.place(&format!("{c}/args/0"))
    );
    assert!(
        args.windows(2)
            .any(|w| w[0] == "--config" && w[1] == DEFAULT_CONFIG_PATH),
        "{} = {args:?} must pass --config {DEFAULT_CONFIG_PATH}",
        dep.place(&format!("{c}/args"))
    );
    let image = format!("{c}/image");
    assert_eq!(
        dep.str_at(&image),
        worker.str_at(&format!("{}/image", container(worker))),
        "{} must be the worker's image",
        dep.place(&image)
    );
    // The same ConfigMap as the worker, so both read one specflow.toml.
    let (map, text) = mounted_config_of(&k8s, dep);
    let (worker_map, _) = mounted_config(&k8s);
    assert_eq!(
        map.name(),
        worker_map.name(),
        "{}: must mount the worker's ConfigMap",
        dep.file
    );
    assert!(
        !text.trim().is_empty(),
        "{}: specflow.toml is empty",
        map.place("data")
    );
    let field = "/spec/template/spec/terminationGracePeriodSeconds";
    let grace = dep.u64_at(field);
    assert!(
        grace >= GATEWAY_STOP_SECS + 10,
        "{} = {grace} must leave the gateway {GATEWAY_STOP_SECS} s and a margin (at least {})",
        dep.place(field),
        GATEWAY_STOP_SECS + 10
    );
}

#[test]
fn gateway_probes_use_the_port_the_service_targets() {
    let k8s = K8s::load();
    let dep = k8s.gateway();
    let c = container(dep);
    let port = dep.index_where(&format!("{c}/ports"), "name", "http");
    let container_port = dep.u64_at(&format!("{c}/ports/{port}/containerPort"));
    assert_eq!(
        container_port,
        gateway_port(),
        "{} must equal the port of GatewayConfig::default().address",
        dep.place(&format!("{c}/ports/{port}/containerPort"))
    );
    assert_ne!(
        container_port,
        http_port(),
        "{}: the gateway serves on [gateway] address, not the worker's [http] port",
        dep.place(&format!("{c}/ports/{port}/containerPort"))
    );

    let svc = k8s.named("Service", GATEWAY, "tests/deploy.rs (the gateway)");
    assert_eq!(
        svc.doc["spec"]["type"].as_str().unwrap_or("ClusterIP"),
        "ClusterIP",
        "{}",
        svc.place("/spec/type")
    );
    let index = svc.index_where("/spec/ports", "name", "http");
    let service_port = format!("/spec/ports/{index}/port");
    assert_eq!(
        svc.u64_at(&service_port),
        80,
        "{}",
        svc.place(&service_port)
    );
    let target = format!("/spec/ports/{index}/targetPort");
    let targeted = resolve_port(dep, &c, svc.at(&target), &svc.place(&target));
    assert_eq!(
        targeted,
        container_port,
        "{} must reach the container port {container_port}",
        svc.place(&target)
    );

    assert_probes(dep, &c, targeted, "the port the Service targets");
}

#[test]
fn gateway_listens_publicly_with_token_digests_from_the_secret() {
    let k8s = K8s::load();
    let dep = k8s.gateway();
    let env = format!("{}/env", container(dep));

    let address = env_index(dep, "SPECFLOW__GATEWAY__ADDRESS");
    let value = format!("{env}/{address}/value");
    assert_eq!(
        dep.str_at(&value),
        format!("0.0.0.0:{}", gateway_port()),
        "{}",
        dep.place(&value)
    );

    // The digests come from the Secret, never from a literal in the manifest.
    let tokens = env_index(dep, "SPECFLOW__GATEWAY__TOKENS");
    assert!(
        dep.doc.pointer(&format!("{env}/{tokens}/value")).is_none(),
        "{}: must come from a secretKeyRef, not a literal value",
        dep.place(&format!("{env}/{tokens}"))
    );
    let reference = format!("{env}/{tokens}/valueFrom/secretKeyRef");
    let secret_name = dep.str_at(&format!("{reference}/name"));
    let key = dep.str_at(&format!("{reference}/key"));
    assert_ne!(
        dep.doc.pointer(&format!("{reference}/optional")),
        Some(&Value::Bool(true)),
        "{}: a public gateway cannot start without digests: the key must not be optional",
        dep.place(&format!("{reference}/optional"))
    );
    let secret = k8s.named("Secret", secret_name, &dep.place(&reference));
    assert!(
        secret.doc["stringData"][key].is_string() || secret.doc["data"][key].is_string(),
        "{}: has no key {key} (referred to by {})",
        secret.place("stringData"),
        dep.place(&reference)
    );

    // As a gateway pod runs it: the ConfigMap with this environment (the Secret's placeholder
    // included) is valid, listens on all interfaces on the container port and needs a token.
    let settings = effective_settings_of(&k8s, dep);
    let listen: SocketAddr = settings.gateway.address.parse().expect("validated address");
    assert!(
        listen.ip().is_unspecified(),
        "{}: gateway.address = {listen} must be 0.0.0.0 in a pod",
        dep.place(&env)
    );
    let c = container(dep);
    let port = dep.index_where(&format!("{c}/ports"), "name", "http");
    assert_eq!(
        u64::from(listen.port()),
        dep.u64_at(&format!("{c}/ports/{port}/containerPort")),
        "{}: gateway.address port must be the container port http",
        dep.place(&env)
    );
    assert!(
        !settings.gateway.tokens.is_empty(),
        "{}: no token digests reach the gateway",
        dep.place(&env)
    );

    // The worker shares the ConfigMap and gets neither: its config must stay valid (a public
    // gateway.address without digests would fail the worker's validation).
    let worker = container_env(&k8s);
    assert!(
        worker
            .iter()
            .all(|(k, _)| !k.starts_with("SPECFLOW__GATEWAY__")),
        "{}: the worker needs no SPECFLOW__GATEWAY__ settings",
        k8s.deployment().place("env")
    );
}

#[test]
fn gateway_hpa_scales_the_gateway_on_cpu() {
    let k8s = K8s::load();
    let dep = k8s.gateway();
    let hpa = k8s.one("HorizontalPodAutoscaler");
    assert_eq!(
        hpa.str_at("/apiVersion"),
        "autoscaling/v2",
        "{}",
        hpa.place("/apiVersion")
    );
    for (field, expected) in [
        ("/spec/scaleTargetRef/apiVersion", "apps/v1"),
        ("/spec/scaleTargetRef/kind", "Deployment"),
        ("/spec/scaleTargetRef/name", dep.name()),
    ] {
        assert_eq!(hpa.str_at(field), expected, "{}", hpa.place(field));
    }
    let index = hpa
        .array_at("/spec/metrics")
        .iter()
        .position(|m| {
            m["type"].as_str() == Some("Resource") && m["resource"]["name"].as_str() == Some("cpu")
        })
        .unwrap_or_else(|| {
            panic!(
                "{} has no Resource metric on cpu",
                hpa.place("/spec/metrics")
            )
        });
    let target = format!("/spec/metrics/{index}/resource/target");
    assert_eq!(
        hpa.str_at(&format!("{target}/type")),
        "Utilization",
        "{}",
        hpa.place(&format!("{target}/type"))
    );
    let utilization = hpa.u64_at(&format!("{target}/averageUtilization"));
    assert!(
        (1..=100).contains(&utilization),
        "{} = {utilization} must be a percentage of the CPU request",
        hpa.place(&format!("{target}/averageUtilization"))
    );
    let min = hpa.u64_at("/spec/minReplicas");
    let max = hpa.u64_at("/spec/maxReplicas");
    assert!(
        min >= 2,
        "{} = {min}: keep two gateways so one can restart without an outage",
        hpa.place("/spec/minReplicas")
    );
    assert!(
        max > min,
        "{} = {max} must exceed minReplicas = {min}",
        hpa.place("/spec/maxReplicas")
    );

    // Utilisation is a share of requests.cpu: without a request the HPA cannot scale.
    let request = format!("{}/resources/requests/cpu", container(dep));
    let millis = millicores(dep.at(&request)).unwrap_or_else(|| {
        panic!(
            "{} = {} is not a CPU quantity",
            dep.place(&request),
            dep.at(&request)
        )
    });
    assert!(millis > 0, "{} must be positive", dep.place(&request));
    // The HPA owns the replica count: a spec.replicas would reset it on every apply.
    assert!(
        dep.doc.pointer("/spec/replicas").is_none(),
        "{}: leave it to {} (an apply would reset the HPA's count)",
        dep.place("/spec/replicas"),
        hpa.file
    );
}

#[test]
fn each_service_selects_only_its_own_pods() {
    let k8s = K8s::load();
    let worker = k8s.deployment();
    let gateway = k8s.gateway();
    let worker_svc = k8s.named("Service", WORKER, "tests/deploy.rs");
    let gateway_svc = k8s.named("Service", GATEWAY, "tests/deploy.rs");
    assert_selects_pods(gateway, "/spec/selector/matchLabels", gateway);
    assert_selects_pods(gateway_svc, "/spec/selector", gateway);
    for (object, pointer, other) in [
        (worker, "/spec/selector/matchLabels", gateway),
        (worker_svc, "/spec/selector", gateway),
        (gateway, "/spec/selector/matchLabels", worker),
        (gateway_svc, "/spec/selector", worker),
    ] {
        assert!(
            !selects(object, pointer, other),
            "{} also selects the pods of {}",
            object.place(pointer),
            other.file
        );
    }
    // The worker's PodDisruptionBudget counts the worker's pods only.
    let pdb = k8s.one("PodDisruptionBudget");
    assert!(
        !selects(pdb, "/spec/selector/matchLabels", gateway),
        "{} also selects the gateway's pods",
        pdb.place("/spec/selector/matchLabels")
    );
}

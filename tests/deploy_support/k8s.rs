//! The Kubernetes manifests under `deploy/k8s`, parsed with `serde_yaml_ng` into JSON values
//! and addressed by JSON pointer, and what the worker's and the gateway's Deployments give
//! their `specflow` container: the mounted config, the environment, the settings it runs with.

use serde::Deserialize;
use serde_json::Value;
use std::collections::BTreeSet;

use super::{GATEWAY, K8S_DIR, WORKER, listed, load_toml, read, repo};
use specflow::config::{DEFAULT_CONFIG_PATH, Settings};

/// A whole number written as a YAML number or as a string ("1000").
pub fn as_u64(value: &Value) -> Option<u64> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
}

/// One Kubernetes object and the file it came from.
pub struct Object {
    pub file: String,
    pub doc: Value,
}

impl Object {
    pub fn kind(&self) -> &str {
        self.doc["kind"].as_str().unwrap_or("?")
    }

    pub fn name(&self) -> &str {
        self.doc["metadata"]["name"].as_str().unwrap_or("?")
    }

    /// Where a failure is: `FILE: Kind name: field`.
    pub fn place(&self, field: &str) -> String {
        format!("{}: {} {}: {field}", self.file, self.kind(), self.name())
    }

    /// The value at a JSON pointer such as `/spec/replicas`; panics naming file and field.
    pub fn at(&self, pointer: &str) -> &Value {
        self.doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{} is missing", self.place(pointer)))
    }

    pub fn str_at(&self, pointer: &str) -> &str {
        let value = self.at(pointer);
        value
            .as_str()
            .unwrap_or_else(|| panic!("{} = {value} is not a string", self.place(pointer)))
    }

    pub fn u64_at(&self, pointer: &str) -> u64 {
        let value = self.at(pointer);
        as_u64(value)
            .unwrap_or_else(|| panic!("{} = {value} is not a whole number", self.place(pointer)))
    }

    pub fn array_at(&self, pointer: &str) -> &[Value] {
        let value = self.at(pointer);
        value
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_else(|| panic!("{} = {value} is not a list", self.place(pointer)))
    }

    /// The index of the first element of the list at `pointer` whose `key` is `wanted`.
    pub fn index_where(&self, pointer: &str, key: &str, wanted: &str) -> usize {
        self.array_at(pointer)
            .iter()
            .position(|item| item[key].as_str() == Some(wanted))
            .unwrap_or_else(|| panic!("{} has no entry with {key} = {wanted}", self.place(pointer)))
    }

    /// A metadata annotation (keys hold '/', which JSON pointers would need escaped).
    pub fn annotation(&self, key: &str) -> &str {
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
pub struct K8s {
    /// YAML files in the directory other than the kustomization.
    pub files: BTreeSet<String>,
    pub objects: Vec<Object>,
}

impl K8s {
    pub fn load() -> Self {
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
    pub fn one(&self, kind: &str) -> &Object {
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
    pub fn named(&self, kind: &str, name: &str, from: &str) -> &Object {
        self.objects
            .iter()
            .find(|o| o.kind() == kind && o.name() == name)
            .unwrap_or_else(|| {
                panic!("{from} refers to {kind} {name}, which no file in {K8S_DIR} defines")
            })
    }

    /// The worker's Deployment.
    pub fn deployment(&self) -> &Object {
        self.named("Deployment", WORKER, "the deploy tests (the worker)")
    }

    /// The gateway's Deployment.
    pub fn gateway(&self) -> &Object {
        self.named("Deployment", GATEWAY, "the deploy tests (the gateway)")
    }
}

/// The JSON pointer of the Deployment's `specflow` container.
pub fn container(deployment: &Object) -> String {
    let index = deployment.index_where("/spec/template/spec/containers", "name", "specflow");
    format!("/spec/template/spec/containers/{index}")
}

/// The container port that `port` (a number or a port name) designates.
pub fn resolve_port(deployment: &Object, container: &str, port: &Value, place: &str) -> u64 {
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
pub fn security<'a>(deployment: &'a Object, container: &str, field: &str) -> Option<&'a Value> {
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
pub fn mounted_config(k8s: &K8s) -> (&Object, String) {
    mounted_config_of(k8s, k8s.deployment())
}

/// The config `dep` mounts at DEFAULT_CONFIG_PATH: its ConfigMap and the TOML text.
pub fn mounted_config_of<'a>(k8s: &'a K8s, dep: &Object) -> (&'a Object, String) {
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
pub fn container_env(k8s: &K8s) -> Vec<(String, String)> {
    container_env_of(k8s, k8s.deployment())
}

/// The `specflow` container's environment in `dep` as the process would see it: literal
/// values, and `secretKeyRef` values from the Secret manifest's `stringData` (its placeholders).
pub fn container_env_of(k8s: &K8s, dep: &Object) -> Vec<(String, String)> {
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

/// The ConfigMap's config with the worker Deployment's environment applied, as a pod runs it.
pub fn effective_settings(k8s: &K8s) -> Settings {
    effective_settings_of(k8s, k8s.deployment())
}

/// The config `dep` mounts with `dep`'s environment applied, as its pods run it.
pub fn effective_settings_of(k8s: &K8s, dep: &Object) -> Settings {
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

/// Liveness `/healthz`, readiness `/readyz` (and a startup probe on `/healthz`, when there is
/// one) of container `c`, each on `port`.
pub fn assert_probes(dep: &Object, c: &str, port: u64, port_is: &str) {
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

/// Every key of the selector at `pointer` in `object` matches the Deployment's pod labels.
pub fn assert_selects_pods(object: &Object, pointer: &str, dep: &Object) {
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

/// Whether the selector at `pointer` in `object` selects the pods of `dep`.
pub fn selects(object: &Object, pointer: &str, dep: &Object) -> bool {
    let labels = dep.at("/spec/template/metadata/labels");
    object
        .at(pointer)
        .as_object()
        .unwrap_or_else(|| panic!("{} is not a map", object.place(pointer)))
        .iter()
        .all(|(key, value)| &labels[key.as_str()] == value)
}

/// The index of the env entry `name` of `dep`'s `specflow` container.
pub fn env_index(dep: &Object, name: &str) -> usize {
    dep.index_where(&format!("{}/env", container(dep)), "name", name)
}

/// A Kubernetes CPU quantity ("250m", "1", "0.5") in millicores.
pub fn millicores(quantity: &Value) -> Option<u64> {
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

/// The `specflow` container of `dep` runs as a non-root user without privileges, on a
/// read-only root filesystem, with resource requests and limits.
pub fn assert_runs_unprivileged(dep: &Object) {
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

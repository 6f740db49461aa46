//! The Kubernetes manifests under `deploy/k8s` agree with the crate: the HTTP port and probe
//! paths, the config path, the ConfigMap's `specflow.toml` (it loads and validates), the drain
//! deadline against the grace period, the KEDA trigger against `[source]`, the
//! kustomization's resource list, the security settings and selectors; for the gateway
//! (`specflow gateway`), its Deployment, Service, HPA and token Secret.
//! Every failure names the file and the field.

mod deploy_support;

use serde_json::Value;
use std::collections::BTreeSet;
use std::net::SocketAddr;

use deploy_support::k8s::{
    K8s, Object, assert_probes, assert_runs_unprivileged, assert_selects_pods, container,
    container_env, effective_settings, effective_settings_of, env_index, millicores,
    mounted_config, mounted_config_of, resolve_port, selects,
};
use deploy_support::{
    GATEWAY, GATEWAY_FILES, GATEWAY_STOP_SECS, K8S_DIR, KUSTOMIZATION, WORKER, gateway_port,
    http_port, listed, load_toml, passes_config, read, toml_keys_ending_with,
};
use specflow::config::{DEFAULT_CONFIG_PATH, ShutdownConfig};

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
    let by_args = passes_config(&args, DEFAULT_CONFIG_PATH);
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
    let file_keys = toml_keys_ending_with(&text, "_file", &place);
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
fn toml_keys_are_found_in_every_table() {
    let text = "# uri_file = \"commented out\"\n\
                top_file = 1\n\
                [kafka]\n\
                sasl_password_file = \"/run/secrets/p\"\n\
                inline = { key_file = \"x\", other = 1 }\n\
                [[extra]]\n\
                cert_file = \"y\"\n";
    assert_eq!(
        toml_keys_ending_with(text, "_file", "test"),
        [
            "extra[0].cert_file",
            "kafka.inline.key_file",
            "kafka.sasl_password_file",
            "top_file"
        ]
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

#[test]
fn selectors_match_the_pods() {
    let k8s = K8s::load();
    let dep = k8s.deployment();
    assert_selects_pods(dep, "/spec/selector/matchLabels", dep);
    assert_selects_pods(
        k8s.named("Service", WORKER, "tests/deploy_k8s.rs"),
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
    let svc = k8s.named("Service", WORKER, "tests/deploy_k8s.rs");
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
// ---- the gateway (`specflow gateway`) ----

#[test]
fn cpu_quantities_parse_like_kubernetes() {
    assert_eq!(millicores(&Value::from("250m")), Some(250));
    assert_eq!(millicores(&Value::from("1")), Some(1000));
    assert_eq!(millicores(&Value::from(0.5)), Some(500));
    assert_eq!(millicores(&Value::from(2)), Some(2000));
    assert_eq!(millicores(&Value::from("lots")), None);
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
        passes_config(&args, DEFAULT_CONFIG_PATH),
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

    let svc = k8s.named("Service", GATEWAY, "tests/deploy_k8s.rs (the gateway)");
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
    let worker_svc = k8s.named("Service", WORKER, "tests/deploy_k8s.rs");
    let gateway_svc = k8s.named("Service", GATEWAY, "tests/deploy_k8s.rs");
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

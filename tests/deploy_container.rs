//! The container image's `deploy/Dockerfile` agrees with the crate and the Kubernetes
//! manifests: its final stage exposes the HTTP port, listens on all interfaces, runs as the
//! non-root uid the Deployment sets, bakes the config in at the default path and runs with it.
//! Every failure names the file and the field.

mod deploy_support;

use serde_json::Value;
use std::net::SocketAddr;

use deploy_support::dockerfile::{Instruction, args_of, parse_dockerfile};
use deploy_support::k8s::{K8s, container, security};
use deploy_support::{DOCKERFILE, http_port, read};
use specflow::config::DEFAULT_CONFIG_PATH;

/// The Dockerfile's instructions.
fn dockerfile() -> Vec<Instruction> {
    parse_dockerfile(&read(DOCKERFILE))
}

#[test]
fn dockerfile_instructions_parse_like_docker() {
    let text = "# syntax=docker/dockerfile:1\n\
                from debian AS base\n\
                RUN apt-get update \\\n\
                # a comment inside the instruction\n\
                \x20&& rm -rf /var/lib/apt/lists/*\n\
                \n\
                CMD [\"run\", \"--config\", \"/etc/x.toml\"]\n";
    let parsed = parse_dockerfile(text);
    let names: Vec<&str> = parsed.iter().map(|i| i.name.as_str()).collect();
    assert_eq!(names, ["FROM", "RUN", "CMD"]);
    assert_eq!(args_of(&parsed, "FROM"), ["debian AS base"]);
    let run = args_of(&parsed, "RUN");
    assert_eq!(
        run[0].split_whitespace().collect::<Vec<_>>(),
        [
            "apt-get",
            "update",
            "&&",
            "rm",
            "-rf",
            "/var/lib/apt/lists/*"
        ]
    );
    assert_eq!(
        args_of(&parsed, "CMD"),
        [r#"["run", "--config", "/etc/x.toml"]"#]
    );
}

#[test]
fn dockerfile_exposes_the_port_and_runs_as_non_root() {
    let all = dockerfile();
    let last_from = all
        .iter()
        .rposition(|i| i.name == "FROM")
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

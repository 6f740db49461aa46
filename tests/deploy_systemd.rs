//! The systemd units under `deploy/systemd` agree with the crate: `specflow.service` and the
//! template `specflow@.service` run and check the right config, notify systemd and outlast the
//! drain deadline; `specflow-gateway.service` runs `specflow gateway` with the worker's
//! hardening; the EnvironmentFile examples name real keys with valid values. Also tests the
//! unit file and time span readers those checks use. Every failure names the file and the key.

mod deploy_support;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::Path;

use deploy_support::systemd::{Setting, Unit, example_env, parse_unit, timespan_secs};
use deploy_support::{
    ENV_EXAMPLE, GATEWAY_ENV_EXAMPLE, GATEWAY_STOP_SECS, GATEWAY_UNIT, TEMPLATE_UNIT, UNIT, listed,
    passes_config, read,
};
use specflow::config::{DEFAULT_CONFIG_PATH, Settings, ShutdownConfig};

/// The section of a unit file that holds every key these tests read.
const SERVICE: &str = "Service";

#[test]
fn unit_files_parse_like_systemd() {
    let text = "# comment\n\
                [Unit]\n\
                Description = a unit\n\
                \n\
                [Service]\n\
                ; another comment\n\
                ExecStart=/usr/bin/specflow run \\\n\
                # skipped inside a continued line\n\
                \x20   --config /etc/x.toml\n\
                Environment=A=1\n\
                Environment=B=2\n\
                CapabilityBoundingSet=\n";
    let setting = |section: &str, key: &str, value: &str| Setting {
        section: section.to_string(),
        key: key.to_string(),
        value: value.to_string(),
    };
    let settings = parse_unit(text).expect("valid unit text");
    assert_eq!(
        settings,
        [
            setting("Unit", "Description", "a unit"),
            setting(
                "Service",
                "ExecStart",
                "/usr/bin/specflow run --config /etc/x.toml"
            ),
            setting("Service", "Environment", "A=1"),
            setting("Service", "Environment", "B=2"),
            setting("Service", "CapabilityBoundingSet", ""),
        ]
    );
    let unit = Unit {
        file: "test".to_string(),
        settings,
    };
    assert_eq!(unit.value(SERVICE, "Environment"), Some("B=2"));
    assert_eq!(unit.values(SERVICE, "Environment"), ["A=1", "B=2"]);
    assert_eq!(unit.value("Unit", "ExecStart"), None);
    assert!(unit.sets("Description") && !unit.sets("WatchdogSec"));

    for bad in ["Type=notify\n", "[Service]\nType notify\n", "[Service\n"] {
        assert!(parse_unit(bad).is_err(), "{bad:?} must not parse");
    }
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
        let unit = Unit::load(file);
        let stop = unit
            .value(SERVICE, "TimeoutStopSec")
            .unwrap_or_else(|| panic!("{file}: TimeoutStopSec is not set"));
        let secs = timespan_secs(stop).unwrap_or_else(|| {
            panic!("{file}: TimeoutStopSec = {stop} is not a time span this test reads")
        });
        let margin = specflow::shutdown::DEADLINE_MARGIN.as_secs();
        assert!(
            secs > (drain + margin) as f64,
            "{file}: TimeoutStopSec = {stop} must exceed ShutdownConfig::default().drain_timeout_secs = {drain} plus the exit margin ({margin} s)"
        );
        assert_eq!(unit.value(SERVICE, "Type"), Some("notify"), "{file}: Type");
        assert!(
            unit.value(SERVICE, "WatchdogSec").is_some(),
            "{file}: WatchdogSec is not set"
        );
        for key in ["ExecStart", "ExecStartPre"] {
            let exec = unit
                .value(SERVICE, key)
                .unwrap_or_else(|| panic!("{file}: {key} is not set"));
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
                passes_config(&words, &config),
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
    let env = example_env(ENV_EXAMPLE);
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

#[test]
fn gateway_unit_runs_the_gateway_with_the_worker_hardening() {
    let unit = Unit::load(GATEWAY_UNIT);
    let file = GATEWAY_UNIT;
    for key in ["ExecStart", "ExecStartPre"] {
        let exec = unit
            .value(SERVICE, key)
            .unwrap_or_else(|| panic!("{file}: {key} is not set"));
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
            passes_config(&words, DEFAULT_CONFIG_PATH),
            "{file}: {key} = {exec} must pass --config {DEFAULT_CONFIG_PATH}"
        );
    }
    assert_eq!(unit.value(SERVICE, "Type"), Some("notify"), "{file}: Type");
    // The gateway sends READY=1 but no watchdog pings: a WatchdogSec would kill it.
    assert!(
        !unit.sets("WatchdogSec"),
        "{file}: WatchdogSec is set, but specflow gateway sends no watchdog pings"
    );
    assert_eq!(
        unit.value(SERVICE, "Restart"),
        Some("on-failure"),
        "{file}: Restart"
    );
    let stop = unit
        .value(SERVICE, "TimeoutStopSec")
        .unwrap_or_else(|| panic!("{file}: TimeoutStopSec is not set"));
    let secs = timespan_secs(stop).unwrap_or_else(|| {
        panic!("{file}: TimeoutStopSec = {stop} is not a time span this test reads")
    });
    assert!(
        secs > GATEWAY_STOP_SECS as f64,
        "{file}: TimeoutStopSec = {stop} must exceed the gateway's {GATEWAY_STOP_SECS} s shutdown"
    );
    let env_files = unit.values(SERVICE, "EnvironmentFile");
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
    // those that name the worker's command, description or watchdog (in the same section).
    let worker = Unit::load(UNIT);
    let own = [
        "Description",
        "ExecStart",
        "ExecStartPre",
        "WatchdogSec",
        "EnvironmentFile",
        "Environment",
    ];
    let missing: Vec<String> = worker
        .settings
        .iter()
        .filter(|s| !own.contains(&s.key.as_str()))
        .filter(|s| !unit.settings.contains(s))
        .map(|s| format!("{}={}", s.key, s.value))
        .collect();
    assert!(
        missing.is_empty(),
        "{file}: lacks these settings of {UNIT}: {missing:?}"
    );
}

#[test]
fn gateway_env_example_names_real_keys() {
    // The lines commented out are what a public gateway needs: they must load and validate.
    let env = example_env(GATEWAY_ENV_EXAMPLE);
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

//! The `specflow` binary's offline commands: `extract` and `check`.

use std::process::Command;

use specflow_test_support::testing as common;

fn specflow(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_specflow"))
        .args(args)
        .output()
        .expect("run specflow")
}

fn reference(name: &str) -> String {
    common::reference_signal(name).display().to_string()
}

#[test]
fn extract_prints_one_json_object_per_frame() {
    let out = specflow(&[
        "extract",
        "--features",
        "rms,f0,mfcc",
        "--frame-length",
        "1024",
        "--hop-length",
        "256",
        &reference("sine440_16k.wav"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let frames: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // 16000 samples, 1024/256, center=False: 1 + (16000 - 1024) / 256 frames.
    assert_eq!(frames.len(), 1 + (16_000 - 1024) / 256);
    for (i, frame) in frames.iter().enumerate() {
        assert_eq!(frame["index"], i as u64);
        assert_eq!(frame["start_sample"], (i * 256) as u64);
        let keys: Vec<&str> = frame
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(
            keys.len(),
            7,
            "index, start_sample, rms, f0, voiced, voiced_prob (pyin), mfcc: {keys:?}"
        );
        assert_eq!(frame["mfcc"].as_array().unwrap().len(), 13);
        let f0 = frame["f0"].as_f64().expect("a steady sine is voiced");
        assert!((f0 - 440.0).abs() < 440.0 * 0.01, "f0 {f0}");
    }
}

#[test]
fn extract_rejects_bad_files_with_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let not_wav = dir.path().join("not.wav");
    std::fs::write(&not_wav, b"this is not a RIFF file at all").unwrap();
    let truncated = dir.path().join("truncated.wav");
    let whole = std::fs::read(reference("sine440_16k.wav")).unwrap();
    std::fs::write(&truncated, &whole[..30]).unwrap();
    let missing = dir.path().join("missing.wav");
    for path in [&not_wav, &truncated, &missing] {
        let out = specflow(&["extract", path.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "one error line: {stderr}");
        assert!(
            stderr.starts_with("error: ") && stderr.contains(path.to_str().unwrap()),
            "{stderr}"
        );
        assert!(out.stdout.is_empty());
    }
    let out = specflow(&[
        "extract",
        "--hop-length",
        "0",
        &reference("sine440_16k.wav"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("dsp.hop_length"));
}

#[test]
fn check_lists_every_problem_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(
        &config,
        "[dsp]\nhop_length = 0\nn_mfcc = 99\n[mongo]\nuri = \"postgres://x\"\n",
    )
    .unwrap();
    let out = specflow(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("error: dsp.hop_length = 0: must be between 1 and frame_length"),
        "{stderr}"
    );
    assert!(stderr.contains("dsp.n_mfcc"), "{stderr}");
    assert!(stderr.contains("mongo.uri"), "{stderr}");
    let ok = specflow(&[
        "check",
        "--config",
        &format!("{}/configs/specflow.toml", env!("CARGO_MANIFEST_DIR")),
    ]);
    assert!(ok.status.success());
}

/// `[kafka.producer]` may tune the producers but not weaken their delivery guarantee: `check`
/// names each key that would, and why; harmless tuning passes.
#[test]
fn check_rejects_producer_settings_that_weaken_the_guarantees() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("weak.toml");
    std::fs::write(
        &config,
        "[kafka.producer]\nacks = \"1\"\n\"enable.idempotence\" = \"false\"\n\"max.in.flight.requests.per.connection\" = \"10\"\n\"linger.ms\" = \"20\"\n",
    )
    .unwrap();
    let out = specflow(&["check", "--config", config.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for key in [
        "kafka.producer.\"acks\" = 1: would weaken the delivery guarantee",
        "kafka.producer.\"enable.idempotence\" = false",
        "kafka.producer.\"max.in.flight.requests.per.connection\" = 10",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
    assert!(!stderr.contains("linger.ms"), "{stderr}");
    let tuned = dir.path().join("tuned.toml");
    std::fs::write(
        &tuned,
        "[kafka.producer]\nacks = \"all\"\n\"linger.ms\" = \"20\"\n\"max.in.flight.requests.per.connection\" = \"5\"\n",
    )
    .unwrap();
    let out = specflow(&["check", "--config", tuned.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `output.exactly_once`: `check` explains what the mode needs and rejects what cannot work
/// with it, naming the keys.
#[test]
fn check_explains_exactly_once_and_rejects_what_cannot_work_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("eos.toml");
    std::fs::write(
        &good,
        "[source]\ninstance_id = \"pod-0\"\n[output]\nexactly_once = true\n",
    )
    .unwrap();
    let out = specflow(&["check", "--config", good.to_str().unwrap()]);
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    for needed in [
        "Kafka brokers 2.5 or newer",
        "transaction.max.timeout.ms",
        "\"specflow-specflow-pod-0\"",
        "isolation.level=read_committed",
        "output.delivery_timeout_ms = 30000 is capped",
    ] {
        assert!(stderr.contains(needed), "{needed} missing from:\n{stderr}");
    }
    let bad = dir.path().join("bad-eos.toml");
    std::fs::write(
        &bad,
        "[kafka.consumer]\n\"isolation.level\" = \"read_uncommitted\"\n\"enable.auto.commit\" = \"true\"\n[kafka.producer]\n\"transactional.id\" = \"mine\"\n[output]\nexactly_once = true\ntransaction_timeout_ms = 500\n",
    )
    .unwrap();
    let out = specflow(&["check", "--config", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for problem in [
        "kafka.consumer.\"isolation.level\" = read_uncommitted: must be read_committed",
        "kafka.consumer.\"enable.auto.commit\" = true: must be false",
        "kafka.producer.\"transactional.id\" = mine: is set by specflow in exactly-once mode: use output.transactional_id",
        "output.transaction_timeout_ms = 500: must be between 1000 and 900000",
    ] {
        assert!(
            stderr.contains(problem),
            "{problem} missing from:\n{stderr}"
        );
    }
    // The id without the mode is a mistake too.
    let stray = dir.path().join("stray.toml");
    std::fs::write(&stray, "[output]\ntransactional_id = \"x\"\n").unwrap();
    let out = specflow(&["check", "--config", stray.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("output.transactional_id = x: is used only with output.exactly_once = true")
    );
}

/// Option lines of a subcommand's `--help`: `(flag, help text)`.
fn options_of(subcommand: &str) -> Vec<(String, String)> {
    let out = specflow(&[subcommand, "--help"]);
    assert!(out.status.success(), "{subcommand} --help");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut options = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let Some(start) = lines.iter().position(|l| l.starts_with("Options:")) else {
        return options;
    };
    for (i, line) in lines.iter().enumerate().skip(start + 1) {
        let trimmed = line.trim_start();
        if !trimmed.starts_with('-') {
            continue;
        }
        // `  -c, --config <CONFIG>  TOML config file [env: ...]`: the help follows two spaces,
        // or (clap's long layout) stands on the next line.
        let (flag, help) = trimmed.split_once("  ").unwrap_or((trimmed, ""));
        let help = match help.trim() {
            "" => lines
                .get(i + 1)
                .map(|next| next.trim())
                .filter(|next| !next.starts_with('-'))
                .unwrap_or(""),
            help => help,
        };
        options.push((flag.trim().to_string(), help.to_string()));
    }
    options
}

#[test]
fn every_option_of_every_command_has_a_help_line() {
    for subcommand in [
        "run", "check", "extract", "produce", "inspect", "gateway", "loadtest",
    ] {
        let options = options_of(subcommand);
        assert!(
            options.len() >= 2,
            "{subcommand}: too few options parsed: {options:?}"
        );
        for (flag, help) in &options {
            assert!(
                !help.is_empty(),
                "specflow {subcommand} {flag} has no --help text"
            );
        }
    }
    let extract: Vec<String> = options_of("extract").into_iter().map(|(f, _)| f).collect();
    for flag in ["--frame-length", "--hop-length", "--n-mels", "--pitch-fmin"] {
        assert!(
            extract.iter().any(|f| f.contains(flag)),
            "extract lists {flag}: {extract:?}"
        );
    }
}

//! The `specflow` binary: parse arguments, set up telemetry, load config, run, map exit codes.

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use specflow::config::{ConfigError, Settings};
use specflow::dsp::{DspConfig, PitchMethod};
use specflow::produce::{ProduceOptions, Signal};
use specflow::telemetry::LogConfig;
use specflow::telemetry::health::Health;
use specflow::telemetry::metrics::Metrics;

#[derive(Parser)]
#[command(
    name = "specflow",
    version,
    about = "Real-time audio features from Kafka to Kafka and MongoDB"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker: consume audio, compute features, write records.
    Run {
        /// TOML config file.
        #[arg(long, short, env = "SPECFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate a config file and list every problem; exit 1 if any.
    Check {
        /// TOML config file.
        #[arg(long, short, env = "SPECFLOW_CONFIG")]
        config: Option<PathBuf>,
        /// Print the effective config (secrets redacted).
        #[arg(long)]
        print: bool,
    },
    /// Print the features of a WAV file as JSON lines (one object per frame).
    Extract(ExtractArgs),
    /// Stream audio into the input topic as N concurrent streams.
    Produce(ProduceArgs),
    /// Print records from the output topic and the MongoDB record count.
    Inspect {
        /// TOML config file.
        #[arg(long, short, env = "SPECFLOW_CONFIG")]
        config: Option<PathBuf>,
        /// How many records to print.
        #[arg(long, default_value_t = 3)]
        records: usize,
        /// Seconds to wait for records.
        #[arg(long, default_value_t = 10)]
        wait: u64,
    },
}

#[derive(clap::Args)]
struct ExtractArgs {
    /// TOML config file whose [dsp] section is used.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Comma-separated feature names, or `all`.
    #[arg(long)]
    features: Option<String>,
    /// Samples per frame (dsp.frame_length).
    #[arg(long)]
    frame_length: Option<usize>,
    /// Samples between frame starts (dsp.hop_length).
    #[arg(long)]
    hop_length: Option<usize>,
    /// Mel bands (dsp.n_mels).
    #[arg(long)]
    n_mels: Option<usize>,
    /// MFCC coefficients (dsp.n_mfcc).
    #[arg(long)]
    n_mfcc: Option<usize>,
    /// Lowest mel band edge in Hz (dsp.fmin).
    #[arg(long)]
    fmin: Option<f64>,
    /// Highest mel band edge in Hz (dsp.fmax; default: half the sample rate).
    #[arg(long)]
    fmax: Option<f64>,
    /// Lowest pitch searched, in Hz (dsp.pitch_fmin).
    #[arg(long)]
    pitch_fmin: Option<f64>,
    /// Highest pitch searched, in Hz (dsp.pitch_fmax).
    #[arg(long)]
    pitch_fmax: Option<f64>,
    /// Pitch tracker: pyin or yin (dsp.pitch_method).
    #[arg(long, value_parser = ["pyin", "yin"])]
    pitch_method: Option<String>,
    /// Frames a pYIN pitch decision waits for (dsp.pitch_lag_frames).
    #[arg(long)]
    pitch_lag_frames: Option<usize>,
    /// The WAV file.
    input: PathBuf,
}

#[derive(clap::Args)]
struct ProduceArgs {
    /// TOML config file (for [kafka] and source.topic).
    #[arg(long, short, env = "SPECFLOW_CONFIG")]
    config: Option<PathBuf>,
    /// WAV file to stream (default: a 440 Hz tone).
    #[arg(long, conflicts_with_all = ["tone", "noise"])]
    wav: Option<PathBuf>,
    /// Sine tone frequency in Hz.
    #[arg(long)]
    tone: Option<f64>,
    /// White noise.
    #[arg(long)]
    noise: bool,
    /// Concurrent streams.
    #[arg(long, default_value_t = 1)]
    streams: usize,
    /// Stream id prefix.
    #[arg(long, default_value = "stream-")]
    stream_prefix: String,
    /// Chunk duration in milliseconds.
    #[arg(long, default_value_t = 100)]
    chunk_ms: u64,
    /// Seconds of audio per stream.
    #[arg(long)]
    duration: Option<f64>,
    /// Sample rate of synthetic signals.
    #[arg(long, default_value_t = 16_000)]
    sample_rate: u32,
    /// Send at wall-clock pace instead of as fast as possible.
    #[arg(long)]
    realtime: bool,
    /// Do not mark the last chunk with audio.eos=1.
    #[arg(long)]
    no_eos: bool,
    /// Topic (default: source.topic from the config).
    #[arg(long)]
    topic: Option<String>,
}

fn load(config: Option<&PathBuf>) -> Result<Settings, ConfigError> {
    Settings::load(config.map(PathBuf::as_path))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, print } => check(config, print),
        Command::Extract(args) => extract(args),
        Command::Run { config } => {
            with_runtime(config, |settings| async move { run(settings).await })
        }
        Command::Inspect {
            config,
            records,
            wait,
        } => with_runtime(config, |settings| async move {
            specflow::inspect::inspect(&settings, records, std::time::Duration::from_secs(wait))
                .await
                .map(|_| ())
        }),
        Command::Produce(args) => {
            let config = args.config.clone();
            with_runtime(
                config,
                |settings| async move { produce(settings, args).await },
            )
        }
    }
}

fn check(config: Option<PathBuf>, print: bool) -> ExitCode {
    let settings = match load(config.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let problems = settings.validate();
    if print {
        print!("{}", settings.to_redacted_toml());
    }
    if problems.is_empty() {
        eprintln!("config ok");
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        ExitCode::from(1)
    }
}

fn extract(args: ExtractArgs) -> ExitCode {
    let dsp = match load(args.config.as_ref()) {
        Ok(settings) => settings.dsp,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let dsp = DspConfig {
        features: args.features.map_or(dsp.features.clone(), |f| {
            f.split(',').map(|s| s.trim().into()).collect()
        }),
        frame_length: args.frame_length.unwrap_or(dsp.frame_length),
        hop_length: args.hop_length.unwrap_or(dsp.hop_length),
        n_mels: args.n_mels.unwrap_or(dsp.n_mels),
        n_mfcc: args.n_mfcc.unwrap_or(dsp.n_mfcc),
        fmin: args.fmin.unwrap_or(dsp.fmin),
        fmax: args.fmax.or(dsp.fmax),
        pitch_fmin: args.pitch_fmin.unwrap_or(dsp.pitch_fmin),
        pitch_fmax: args.pitch_fmax.unwrap_or(dsp.pitch_fmax),
        pitch_method: match args.pitch_method.as_deref() {
            Some("yin") => PitchMethod::Yin,
            Some(_) => PitchMethod::Pyin,
            None => dsp.pitch_method,
        },
        pitch_lag_frames: args.pitch_lag_frames.unwrap_or(dsp.pitch_lag_frames),
        ..dsp
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    match specflow::extract::extract_wav(&args.input, &dsp, &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn with_runtime<F, Fut>(config: Option<PathBuf>, body: F) -> ExitCode
where
    F: FnOnce(Settings) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let settings = match Settings::load_valid(config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            LogConfig::default().init();
            error!("{e}");
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    settings.log.init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(body(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "Exiting with an error.");
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    specflow::shutdown::install(shutdown.clone());
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let mut http = None;
    if settings.http.enabled {
        let stop = shutdown.clone();
        let (address, server) = specflow::telemetry::http::bind(
            &settings.http,
            metrics.clone(),
            health.clone(),
            async move { stop.cancelled().await },
        )
        .await
        .with_context(|| format!("cannot listen on http.address {}", settings.http.address))?;
        info!(%address, "HTTP endpoint listening (/metrics /healthz /readyz).");
        http = Some(tokio::spawn(server));
    }
    let drain = std::time::Duration::from_secs(settings.shutdown.drain_timeout_secs);
    let worker = specflow::pipeline::run(settings, metrics, health, shutdown.clone());
    tokio::pin!(worker);
    let result = tokio::select! {
        r = &mut worker => r,
        _ = async { shutdown.cancelled().await; tokio::time::sleep(drain).await } => {
            Err(anyhow::anyhow!("drain deadline of {}s passed; exiting without finishing", drain.as_secs()))
        }
    };
    if let Some(http) = http {
        http.abort();
    }
    result
}

async fn produce(settings: Settings, args: ProduceArgs) -> anyhow::Result<()> {
    let signal = match (args.wav, args.tone, args.noise) {
        (Some(path), _, _) => Signal::Wav(path),
        (_, _, true) => Signal::Noise,
        (_, tone, _) => Signal::Tone(tone.unwrap_or(440.0)),
    };
    let options = ProduceOptions {
        signal,
        streams: args.streams,
        stream_prefix: args.stream_prefix,
        chunk_ms: args.chunk_ms,
        duration_secs: args.duration,
        sample_rate: args.sample_rate,
        realtime: args.realtime,
        eos: !args.no_eos,
        topic: args.topic,
    };
    let summary = specflow::produce::produce(&settings, &options).await?;
    println!(
        "produced {} messages, {} bytes",
        summary.messages, summary.bytes
    );
    Ok(())
}

//! The commands around the worker: `check`, `extract` (offline features of a WAV file),
//! `produce` (a load generator), `loadtest` (load through `specflow gateway`) and `inspect` (a
//! look at what a deployment wrote). Part of the binary, not of the library: none of it runs
//! inside the worker.

pub mod extract;
pub mod inspect;
pub mod loadtest;
pub mod produce;

use std::path::PathBuf;
use std::process::ExitCode;

use produce::{ProduceOptions, Signal};
use specflow::config::Settings;
use specflow::dsp::{DspConfig, PitchMethod};

/// `specflow extract`: DSP settings that override the config's `[dsp]`, and the WAV file.
#[derive(clap::Args)]
pub struct ExtractArgs {
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

/// `specflow produce`: what to send, how many streams, how fast.
#[derive(clap::Args)]
pub struct ProduceArgs {
    /// TOML config file (for [kafka] and source.topic).
    #[arg(long, short, env = "SPECFLOW_CONFIG")]
    pub config: Option<PathBuf>,
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
    /// With --realtime: send every stream's chunk at the same instant (the worst-case burst)
    /// instead of spreading the streams' chunk boundaries evenly over one chunk period.
    #[arg(long, requires = "realtime")]
    aligned: bool,
    /// Do not mark the last chunk with audio.eos=1.
    #[arg(long)]
    no_eos: bool,
    /// Topic (default: source.topic from the config).
    #[arg(long)]
    topic: Option<String>,
}

/// `specflow check`: loads the config and lists every problem (exit 2: unreadable, 1: invalid).
pub fn check(config: Option<PathBuf>, print: bool) -> ExitCode {
    let settings = match Settings::load(config.as_deref()) {
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
        if let Some(id) = settings.transactional_id() {
            explain_exactly_once(&settings, &id);
        }
        eprintln!("config ok");
        ExitCode::SUCCESS
    } else {
        for problem in &problems {
            eprintln!("error: {problem}");
        }
        ExitCode::from(1)
    }
}

/// What `output.exactly_once` needs from the cluster, printed by `specflow check`.
fn explain_exactly_once(settings: &Settings, transactional_id: &str) {
    let output = &settings.output;
    eprintln!("output.exactly_once is on. It needs:");
    eprintln!(
        "  - Kafka brokers 2.5 or newer (KIP-447: offsets committed in a transaction with the group's metadata);"
    );
    eprintln!(
        "  - a transaction coordinator: __transaction_state with transaction.state.log.replication.factor and min.isr the cluster can meet;"
    );
    eprintln!(
        "  - output.transaction_timeout_ms = {} at most the brokers' transaction.max.timeout.ms (default 900000);",
        output.transaction_timeout_ms
    );
    eprintln!(
        "  - transactional.id {transactional_id:?} unique among running instances{};",
        if settings.source.instance_id.is_empty() && output.transactional_id.is_empty() {
            " (derived from the host and pid: set source.instance_id to keep it across restarts)"
        } else {
            ""
        }
    );
    eprintln!(
        "  - readers of {} and {} with isolation.level=read_committed (acks=all and idempotence are always on).",
        output.topic, settings.dead_letter.topic
    );
    if output.delivery_timeout_ms > output.transaction_timeout_ms {
        eprintln!(
            "  note: output.delivery_timeout_ms = {} is capped at output.transaction_timeout_ms.",
            output.delivery_timeout_ms
        );
    }
}

/// `specflow extract`: prints the features of a WAV file as JSON lines.
pub fn extract(args: ExtractArgs) -> ExitCode {
    let dsp = match Settings::load(args.config.as_deref()) {
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
    match extract::extract_wav(&args.input, &dsp, &mut out) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            drop(out);
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// `specflow produce`: streams audio into the input topic and prints what was sent.
pub async fn produce(settings: Settings, args: ProduceArgs) -> anyhow::Result<()> {
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
        aligned: args.aligned,
        eos: !args.no_eos,
        topic: args.topic,
    };
    let summary = produce::produce(&settings, &options).await?;
    println!(
        "produced {} messages, {} bytes",
        summary.messages, summary.bytes
    );
    Ok(())
}

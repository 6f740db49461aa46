//! The `specflow` binary: parse arguments, set up telemetry, load config, run, map exit codes.
//! The worker itself is the library ([`specflow::pipeline::run`]); the other commands live in
//! [`cli`].

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use tracing::{error, info};

mod cli;

use specflow::config::Settings;
use specflow::shutdown::{Shutdown, Unfinished};
use specflow::telemetry::LogConfig;
use specflow::telemetry::health::Health;
use specflow::telemetry::metrics::Metrics;

/// mimalloc instead of the system allocator: the record buffers (tens of KB, one set per
/// message) are reused from thread-local pages instead of growing the heap and faulting pages in.
/// Built with mimalloc's `override` feature, it also serves C's `malloc` and `free`, so
/// librdkafka's copies of the records and its fetch and produce buffers come from the same
/// arenas: glibc's heap gave that memory back to the kernel after each batch and faulted it in
/// again (a third of the worker's page faults; benches/README.md, round 8).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Turns transparent huge pages off for this process (what `MIMALLOC_ALLOW_THP=0` does). With
/// THP on (`always` on most distributions), every page the allocator takes back after freeing it
/// faults in a whole 2 MiB huge page, zeroed: 13% of the worker's CPU in `clear_page` on
/// issue 13's workload, 2.5% without. Measured with and without it back to back (round 7,
/// benches/README.md, "Unsafe outside the DSP kernels"): 128 and 138 µs of worker CPU per
/// message against 152 and 169 µs with THP on, well above the 5% an `unsafe` block must save.
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1) takes integers only and sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

// SAFETY: the signature is mimalloc's own (`include/mimalloc.h`: `bool
// mi_is_in_heap_region(const void*)`), and the `mimalloc` crate links that library. Test only.
#[cfg(test)]
unsafe extern "C" {
    fn mi_is_in_heap_region(p: *const std::ffi::c_void) -> bool;
}

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
    Extract(cli::ExtractArgs),
    /// Stream audio into the input topic as N concurrent streams.
    Produce(cli::ProduceArgs),
    /// Serve the HTTP/WebSocket front door: audio in to the input topic, features out.
    Gateway {
        /// TOML config file ([gateway], [kafka], source.topic, [input], [mongo]).
        #[arg(long, short, env = "SPECFLOW_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Drive N real-time streams through a running gateway and report its delays.
    Loadtest(cli::loadtest::LoadtestArgs),
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

fn main() -> ExitCode {
    disable_transparent_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config, print } => cli::check(config, print),
        Command::Extract(args) => cli::extract(args),
        Command::Run { config } => {
            with_runtime(config, |settings| async move { run(settings).await })
        }
        Command::Gateway { config } => with_runtime(config, specflow::gateway::serve),
        Command::Loadtest(args) => {
            let config = args.config.clone();
            with_runtime(config, |settings| async move {
                let report = cli::loadtest::loadtest(settings, args.clone()).await?;
                cli::loadtest::print_report(&report, &args);
                if let Some(path) = &args.json {
                    std::fs::write(path, serde_json::to_vec_pretty(&report)?)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                Ok(())
            })
        }
        Command::Inspect {
            config,
            records,
            wait,
        } => with_runtime(config, |settings| async move {
            cli::inspect::inspect(&settings, records, std::time::Duration::from_secs(wait))
                .await
                .map(|_| ())
        }),
        Command::Produce(args) => {
            let config = args.config.clone();
            with_runtime(config, |settings| async move {
                cli::produce(settings, args).await
            })
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
    let outcome = runtime.block_on(body(settings));
    // Tasks still running (a restore's blocking read, a client's close) do not hold the exit.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(error = format!("{e:#}"), "Exiting with an error.");
            eprintln!("error: {e:#}");
            if e.downcast_ref::<Unfinished>().is_some() {
                ExitCode::from(specflow::shutdown::EXIT_UNFINISHED)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

/// How long the runtime waits for its tasks after the command returned: part of
/// [`specflow::shutdown::DEADLINE_MARGIN`] left after the consumer's close.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(1);

async fn run(settings: Settings) -> anyhow::Result<()> {
    let shutdown = Shutdown::new(std::time::Duration::from_secs(
        settings.shutdown.drain_timeout_secs,
    ));
    shutdown
        .install_signal_handlers()
        .context("cannot serve stop signals")?;
    let metrics = Arc::new(Metrics::new());
    let health = Arc::new(Health::default());
    let mut http = None;
    if settings.http.enabled {
        let stop = shutdown.clone();
        let (address, server) = specflow::telemetry::http::bind(
            &settings.http,
            metrics.clone(),
            health.clone(),
            async move { stop.requested().await },
        )
        .await
        .with_context(|| format!("cannot listen on http.address {}", settings.http.address))?;
        info!(%address, "HTTP endpoint listening (/metrics /healthz /readyz).");
        http = Some(tokio::spawn(server));
    }
    // The worker keeps its own deadline (the signal plus the drain time); the signal thread's
    // watchdog is the last resort should a blocking call hold it past that and the margin.
    let result = specflow::pipeline::run(settings, metrics, health, shutdown).await;
    if let Some(http) = http {
        http.abort();
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// C code's `malloc` (librdkafka's) is mimalloc's, not glibc's.
    #[test]
    fn c_malloc_is_mimalloc() {
        // SAFETY: a block allocated, asked about and freed by the same allocator.
        unsafe {
            let block = libc::malloc(10_000);
            assert!(!block.is_null());
            assert!(
                mi_is_in_heap_region(block),
                "malloc did not come from mimalloc"
            );
            libc::free(block);
        }
    }
}

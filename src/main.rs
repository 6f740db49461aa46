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
/// issue 13's workload, 2.5% without (benches/README.md).
fn disable_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: prctl(PR_SET_THP_DISABLE, 1) takes integers only and sets a flag of this process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// mimalloc's `mi_option_purge_delay` (v3's `mi_option_t`, `include/mimalloc.h`).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

// SAFETY: the signatures are mimalloc's own (`include/mimalloc.h`: `void mi_option_set(
// mi_option_t, long)`, `long mi_option_get(mi_option_t)`, `bool mi_is_in_heap_region(const
// void*)`; `mi_option_t` is a C enum, an `int`), and the `mimalloc` crate links that library.
unsafe extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    #[cfg(test)]
    fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
    #[cfg(test)]
    fn mi_is_in_heap_region(p: *const std::ffi::c_void) -> bool;
}

/// How long freed memory stays with mimalloc before it goes back to the kernel, in ms.
const PURGE_DELAY_MS: std::ffi::c_long = 10_000;

/// Keeps freed memory in mimalloc's arenas for [`PURGE_DELAY_MS`] instead of one second
/// (what `MIMALLOC_PURGE_DELAY=10000` does). The worker frees and reallocates the same tens of
/// megabytes every batch (record buffers, the MongoDB driver's insert messages), and a batch of
/// 1,000 messages can take longer than a second when MongoDB is the bound: purged after one
/// second, each batch faulted them in again, zeroed, 13–15 page faults per message and a
/// quarter of the worker's CPU in the kernel on issue 13's workload, against 6–7 with the
/// longer delay (the same as never purging; benches/README.md). Memory left unused for
/// 10 s still goes back, so the resident set falls again after a burst (242 MB when never
/// purged, 110 MB at the end of that workload). An operator's `MIMALLOC_PURGE_DELAY` wins.
fn delay_purging_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: mi_option_set takes integers only and sets a process-wide allocator option;
        // mimalloc reads it at each purge decision.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, PURGE_DELAY_MS) };
    }
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
    delay_purging_freed_memory();
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
    shutdown.install_signal_handlers();
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

    /// The option number is mimalloc v3's purge delay: its default (1,000 ms) reads back from
    /// that number before the worker sets it, and the worker's delay after.
    #[test]
    fn delay_purging_freed_memory_sets_mimallocs_purge_delay() {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: reads a process-wide allocator option.
        assert_eq!(unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) }, 1_000);
        delay_purging_freed_memory();
        // SAFETY: as above.
        assert_eq!(
            unsafe { mi_option_get(MI_OPTION_PURGE_DELAY) },
            PURGE_DELAY_MS
        );
    }

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

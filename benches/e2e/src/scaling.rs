//! Scaling: the throughput run again over `runtime.worker_threads` values on the same
//! preloaded topic. The value equal to the core count reuses the main run
//! (`worker_threads = 0` resolves to it).

use specflow_test_support::Expect;

use crate::args::Args;
use crate::context::Ctx;
use crate::report::ThroughputRun;
use crate::throughput::worker_run;

/// Scaling thread counts: `--threads`, else 1, 2, 4, … and the core count.
pub fn thread_counts(args: &Args, cores: usize) -> Vec<usize> {
    if let Some(list) = &args.threads {
        return list
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .filter(|&t| t > 0)
            .collect();
    }
    let mut counts = Vec::new();
    let mut t = 1;
    while t < cores {
        counts.push(t);
        t *= 2;
    }
    counts.push(cores);
    counts
}

/// One throughput run per thread count on `input` (the main run stands for the core count).
pub async fn scaling_phase(
    ctx: &Ctx,
    input: &str,
    expect: &Expect,
    main: &ThroughputRun,
    cores: usize,
) -> anyhow::Result<Vec<ThroughputRun>> {
    let mut rows = Vec::new();
    for threads in thread_counts(&ctx.args, cores) {
        if threads == cores {
            rows.push(ThroughputRun {
                worker_threads: Some(threads),
                note: Some("main run (worker_threads = 0 = one per core)".into()),
                ..main.clone()
            });
        } else {
            let tag = format!("t{threads}");
            rows.push(worker_run(ctx, input, expect, Some(threads), &tag).await?);
        }
    }
    Ok(rows)
}

//! Scaling by adding instances: the preloaded topic consumed by N `specflow run` processes of T
//! threads each in one consumer group (for example 1 × 2 against 2 × 1), timed from the first
//! message any instance consumed to the last record stored by all of them, with the CPU of
//! every instance and how the partitions were split.

use anyhow::bail;
use std::time::{Duration, Instant};

use specflow_test_support::Expect;

use crate::context::{Ctx, Worker, proc_cpu_seconds, say};
use crate::report::{InstanceShare, InstancesRun, round2, round3};

/// `--instances` as (instances, threads each): `"1x2,2x1"` → `[(1, 2), (2, 1)]`.
pub fn layouts(spec: &str) -> anyhow::Result<Vec<(usize, usize)>> {
    spec.split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            let (n, t) = s
                .trim()
                .split_once('x')
                .ok_or_else(|| anyhow::anyhow!("--instances {s:?}: expected NxT, e.g. 2x1"))?;
            let (n, t): (usize, usize) = (n.parse()?, t.parse()?);
            if n == 0 || t == 0 {
                bail!("--instances {s:?}: instances and threads must be at least 1");
            }
            Ok((n, t))
        })
        .collect()
}

/// Runs `instances` workers of `threads_each` threads in one group over `input` until every
/// record is stored.
pub async fn instances_run(
    ctx: &Ctx,
    input: &str,
    expect: &Expect,
    instances: usize,
    threads_each: usize,
) -> anyhow::Result<InstancesRun> {
    let tag = format!("i{instances}x{threads_each}");
    let names = ctx.names(&tag, input);
    ctx.create_topics(&[&names.output, &names.dead_letter], ctx.partitions)
        .await?;
    say(format!(
        "instances run '{tag}': {instances} × worker_threads={threads_each} in one group on {} messages",
        expect.messages
    ));
    let mut workers: Vec<Worker> = (0..instances)
        .map(|i| ctx.spawn_worker(&names, Some(threads_each), &format!("{tag}-{i}")))
        .collect::<anyhow::Result<_>>()?;
    let poll = Duration::from_millis(ctx.args.metrics_poll_ms);
    let deadline = Instant::now() + Duration::from_secs(ctx.args.run_timeout);
    let cpu_of = |workers: &[Worker]| -> f64 {
        workers
            .iter()
            .map(|w| proc_cpu_seconds(w.pid, ctx.ticks).unwrap_or(0.0))
            .sum()
    };
    let mut start: Option<(Instant, f64)> = None;
    let shares = loop {
        for worker in &mut workers {
            worker.check_alive()?;
        }
        let mut scrapes = Vec::with_capacity(workers.len());
        for worker in &workers {
            match worker.scrape().await {
                Ok(scrape) => scrapes.push(scrape),
                Err(_) => break,
            }
        }
        let (at, cpu) = (Instant::now(), cpu_of(&workers));
        if scrapes.len() == workers.len() {
            let mut consumed = 0.0;
            let mut written = 0.0;
            for scrape in &scrapes {
                consumed += scrape.get("messages_consumed_total")?;
                written += scrape.get("mongo_documents_written_total")?;
            }
            if start.is_none() && consumed > 0.0 {
                start = Some((at, cpu));
            }
            if consumed >= expect.messages as f64 && written >= expect.records as f64 {
                let shares = scrapes
                    .iter()
                    .map(|s| {
                        Ok(InstanceShare {
                            assigned_partitions: s.get("assigned_partitions")?,
                            messages: s.get("messages_consumed_total")?,
                            rebalances: s.get("rebalances_total")?,
                        })
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                let (started_at, started_cpu) = start.expect("consumed > 0");
                let wall = at.duration_since(started_at).as_secs_f64();
                let cpu = cpu - started_cpu;
                break (shares, wall, cpu);
            }
        }
        if Instant::now() > deadline {
            bail!("instances run '{tag}' timed out");
        }
        tokio::time::sleep(poll).await;
    };
    let (per_instance, wall, worker_cpu) = shares;
    let mut clean = true;
    for worker in workers {
        clean &= worker.stop().await?.0;
    }
    if !ctx.args.keep
        && let Ok(client) = ctx.mongo().await
    {
        let _ = client.database(&names.database).drop().await;
    }
    say(format!(
        "  {:.1} s, {:.0} msg/s, workers {:.2} cores; messages per instance {:?}",
        wall,
        expect.messages as f64 / wall,
        worker_cpu / wall,
        per_instance.iter().map(|s| s.messages).collect::<Vec<_>>()
    ));
    Ok(InstancesRun {
        tag,
        instances,
        threads_each,
        wall_s: round3(wall),
        messages_per_s: round2(expect.messages as f64 / wall),
        x_realtime: round2(expect.audio_seconds / wall),
        workers_cpu_s: round3(worker_cpu),
        workers_cores_used: round2(worker_cpu / wall),
        cpu_us_per_message: round2(worker_cpu * 1e6 / expect.messages as f64),
        per_instance,
        clean_exit: clean,
    })
}

#[cfg(test)]
mod tests {
    use super::layouts;

    #[test]
    fn layouts_parse_and_refuse_nonsense() {
        assert_eq!(layouts("1x2,2x1").unwrap(), [(1, 2), (2, 1)]);
        assert_eq!(layouts(" 3x1 ").unwrap(), [(3, 1)]);
        assert!(layouts("2").is_err());
        assert!(layouts("0x2").is_err());
        assert!(layouts("ax1").is_err());
    }
}

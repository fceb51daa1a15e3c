//! The fan-out load client of `make bench`.
//!
//! Opens many concurrent subscribers to `GET /api/messages/stream`, waits until every one
//! has received `ready`, then makes spaced writes (`POST /api/messages`) and times, for
//! each write, the delivery of its `created` event at the first, median and last
//! subscriber. Writes a JSON report and prints a summary.

mod http;
mod report;
mod subscriber;
mod writer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use tokio::sync::{Semaphore, watch};

use crate::subscriber::{Counters, Subscriber};

#[derive(Parser, Debug)]
#[command(about)]
struct Args {
    /// Where the site answers (nginx), as host:port.
    #[arg(long, default_value = "127.0.0.1:8080")]
    target: SocketAddr,
    /// Concurrent stream subscribers.
    #[arg(long, default_value_t = 10_000)]
    subscribers: usize,
    /// Writes made once every subscriber is ready.
    #[arg(long, default_value_t = 100)]
    writes: usize,
    /// Writes per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Streams being opened at once (until each has its `ready`).
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// How long every subscriber may take to receive `ready`, in seconds.
    #[arg(long, default_value_t = 180)]
    ready_timeout: u64,
    /// How long after the last write its events may take to arrive, in seconds.
    #[arg(long, default_value_t = 15)]
    drain_timeout: u64,
    /// Where to write the JSON report.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let nofile = raise_nofile_limit()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let report = runtime.block_on(run(&args, nofile))?;
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    print!("{}", report.summary());
    Ok(())
}

/// Every subscriber holds a socket: the soft limit goes up to the hard one.
fn raise_nofile_limit() -> anyhow::Result<u64> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read or write the struct passed to them.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
        }
        limit.rlim_cur = limit.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(limit.rlim_cur)
}

async fn run(args: &Args, nofile: u64) -> anyhow::Result<report::Report> {
    // The writer's connection, stdio and the runtime need a few descriptors beyond the streams.
    if (args.subscribers as u64) + 32 > nofile {
        bail!(
            "{} subscribers need more file descriptors than the limit of {nofile}",
            args.subscribers
        );
    }
    println!(
        "fanout: opening {} streams to http://{}/api/messages/stream ({} at a time)",
        args.subscribers, args.target, args.connect_concurrency
    );
    let counters = Arc::new(Counters::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let opening = Arc::new(Semaphore::new(args.connect_concurrency));
    let started = Instant::now();
    let tasks: Vec<_> = (0..args.subscribers)
        .map(|_| {
            let subscriber = Subscriber {
                target: args.target,
                counters: counters.clone(),
                opening: opening.clone(),
                stop: stop_rx.clone(),
            };
            tokio::spawn(subscriber.run())
        })
        .collect();

    let deadline = started + Duration::from_secs(args.ready_timeout);
    let mut last_print = Instant::now();
    while counters.ready.load(Ordering::Relaxed) < args.subscribers {
        if Instant::now() > deadline {
            let _ = stop_tx.send(true);
            bail!(
                "only {} of {} subscribers were ready after {} s ({} connect errors)",
                counters.ready.load(Ordering::Relaxed),
                args.subscribers,
                args.ready_timeout,
                counters.connect_errors.load(Ordering::Relaxed)
            );
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            println!("fanout: {} ready", counters.ready.load(Ordering::Relaxed));
            last_print = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_seconds = started.elapsed().as_secs_f64();
    println!("fanout: all {} ready after {ready_seconds:.1} s; writing", args.subscribers);

    let writing = Instant::now();
    let writes = writer::write_spaced(args.target, args.writes, args.rate).await;
    let writes_seconds = writing.elapsed().as_secs_f64();
    let expected = writes.iter().filter(|w| w.message_id.is_some()).count() * args.subscribers;
    let drain_deadline = Instant::now() + Duration::from_secs(args.drain_timeout);
    while counters.created.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = stop_tx.send(true);
    let mut logs = Vec::with_capacity(tasks.len());
    for task in tasks {
        logs.push(task.await?);
    }
    Ok(report::Report::build(args, ready_seconds, writes_seconds, &writes, &logs, &counters))
}

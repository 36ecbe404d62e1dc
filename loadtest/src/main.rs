//! `loadtest run`: drive a running rxtrack with a simulated fleet and report.
#![allow(clippy::print_stdout, reason = "a command line prints its report")]

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use loadtest::run::{RunConfig, run};

#[derive(Parser)]
#[command(
    name = "loadtest",
    about = "Drive a running rxtrack with a simulated fleet and measure it"
)]
struct Cli {
    /// Base URL of the server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Another node of the same deployment (repeatable): drivers,
    /// dispatchers and patients are spread over the nodes, each patient on
    /// another node than its driver.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Tenant to load.
    #[arg(long, default_value = "demo")]
    tenant: String,
    /// File holding the tenant's HS256 secret (the demo node's is rxtrack-data/demo-tenant.secret).
    #[arg(long, default_value = "rxtrack-data/demo-tenant.secret")]
    secret_file: PathBuf,
    #[arg(long, default_value_t = 50)]
    drivers: usize,
    #[arg(long, default_value_t = 3)]
    stops: usize,
    /// Seconds of driving.
    #[arg(long, default_value_t = 30)]
    duration: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 1)]
    dispatchers: usize,
    /// Do not open a patient socket per delivery.
    #[arg(long)]
    no_patients: bool,
    /// A local server process to sample CPU and memory from.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Idle mode: hold this many patient sockets open and report the
    /// server's memory per socket (needs --server-pid) instead of driving.
    #[arg(long)]
    idle_sockets: Option<usize>,
    /// Idle mode: spread client sockets over 127.0.0.1 ..= 127.0.0.N.
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Stepped mode: after each run that holds, add this many drivers and
    /// run again, until one fails (p99 change-to-patient over 50 ms, more
    /// than 0.1% of pings unacknowledged, or sockets closed) or --max-drivers.
    #[arg(long)]
    step: Option<usize>,
    #[arg(long, default_value_t = 20_000)]
    max_drivers: usize,
    /// Churn: open and close this many patient sockets per second during the run.
    #[arg(long, default_value_t = 0)]
    churn: usize,
    /// Seconds of driving before --duration whose latencies are reported
    /// apart (every driver's first fixes fall in them).
    #[arg(long, default_value_t = 5)]
    warmup: u64,
    /// The bundled road extract to drive on: helsinki or kotka.
    #[arg(long, default_value = "helsinki")]
    extract: String,
    /// Drivers start loaded at the pharmacy instead of collecting first.
    #[arg(long)]
    start_at_pickup: bool,
}

/// Idle mode: holds patient sockets open and reports the server's memory per socket.
async fn idle(cli: &Cli, secret: Vec<u8>, sockets: usize) -> anyhow::Result<()> {
    let pid = cli.server_pid.context("idle mode needs --server-pid")?;
    let report = loadtest::idle::run(loadtest::idle::IdleConfig {
        url: cli.url.trim_end_matches('/').to_owned(),
        tenant: cli.tenant.clone(),
        secret,
        sockets,
        sources: cli.sources,
        settle: Duration::from_secs(3),
        server_pid: pid,
    })
    .await?;
    println!(
        "{} idle patient sockets: server RSS {} KiB -> {} KiB, {:.0} bytes per socket",
        report.sockets_open, report.rss_before_kib, report.rss_after_kib, report.bytes_per_socket
    );
    if let Some(p) = &cli.report {
        std::fs::write(p, serde_json::to_string_pretty(&report)?)?;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let secret = std::fs::read(&cli.secret_file)
        .with_context(|| format!("reading {}", cli.secret_file.display()))?;
    let secret = String::from_utf8_lossy(&secret)
        .trim_end()
        .as_bytes()
        .to_vec();
    if let Some(sockets) = cli.idle_sockets {
        return idle(&cli, secret, sockets).await;
    }
    let peers: Vec<String> = cli
        .peers
        .iter()
        .map(|u| u.trim_end_matches('/').to_owned())
        .collect();
    // One fixed run with `drivers` drivers, everything else from the command line.
    let fixed = |drivers: usize| RunConfig {
        url: cli.url.trim_end_matches('/').to_owned(),
        tenant: cli.tenant.clone(),
        secret: secret.clone(),
        drivers,
        stops_per_driver: cli.stops,
        duration: Duration::from_secs(cli.duration),
        seed: cli.seed,
        dispatchers: cli.dispatchers,
        patients: !cli.no_patients,
        server_pid: cli.server_pid,
        churn_per_s: cli.churn,
        warmup: Duration::from_secs(cli.warmup),
        extract: if cli.extract == "kotka" {
            "kotka"
        } else {
            "helsinki"
        },
        start_at_pickup: cli.start_at_pickup,
        peers: peers.clone(),
    };
    anyhow::ensure!(
        loadtest::run::extract(&cli.extract).is_some(),
        "--extract {:?}: helsinki or kotka",
        cli.extract
    );
    if let Some(step) = cli.step {
        let mut drivers = cli.drivers;
        let mut steps = Vec::new();
        let mut held = None;
        while drivers <= cli.max_drivers {
            let r = run(fixed(drivers)).await?;
            let failed = loadtest::stepped::verdict(&r, &loadtest::stepped::Limits::default());
            let p99 = |p: Option<loadtest::report::Percentiles>| p.map_or(f64::NAN, |p| p.p99_ms);
            println!(
                "{drivers} drivers: {:.0} pings/s acked, p99 ping-to-patient {:.1} ms, p99 ack {:.1} ms, server {:.0}% of a core: {}",
                r.pings_per_s_acked,
                p99(r.ping_to_patient),
                p99(r.ack),
                r.server_cpu_percent.unwrap_or(f64::NAN),
                failed.as_deref().unwrap_or("held")
            );
            steps.push(loadtest::stepped::Step {
                drivers,
                pings_per_s: r.pings_per_s_acked,
                failed: failed.clone(),
                report: r.clone(),
            });
            if failed.is_some() {
                break;
            }
            held = Some((drivers, r));
            drivers += step.max(1);
        }
        match &held {
            Some((d, r)) => println!("last load that held: {d} drivers\n{}", r.table()),
            None => println!("no load held"),
        }
        if let Some(p) = cli.report {
            std::fs::write(&p, serde_json::to_string_pretty(&steps)?)?;
        }
        return Ok(());
    }
    let report = run(fixed(cli.drivers)).await?;
    print!("{}", report.table());
    if let Some(p) = cli.report {
        std::fs::write(&p, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

//! The `rxtrack` command line.
#![allow(
    clippy::print_stdout,
    reason = "a command line prints its results and quick start on stdout"
)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use rxtrack_server::auth::{AUDIENCE, Claims, Role, mint_hs256};
use rxtrack_server::config::{Config, DEFAULT_DATA_DIR, DEMO_TENANT};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "rxtrack",
    version,
    about = "Real-time live tracking for pharmacy and medical deliveries"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Where {
    /// Configuration file (TOML). Without one, a single demo node runs.
    #[arg(long, env = "RXTRACK_CONFIG")]
    config: Option<PathBuf>,
    /// Data folder (overrides the configuration's `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server.
    Serve {
        #[command(flatten)]
        at: Where,
        /// Listen address (overrides the configuration's `listen`).
        #[arg(long)]
        listen: Option<String>,
        /// Log format on stderr.
        #[arg(long, default_value = "text", value_parser = ["text", "json"])]
        log_format: String,
    },
    /// Run the zero-config node with a small simulated fleet on Helsinki's streets.
    Demo {
        /// Data folder (default ./rxtrack-data).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Listen address.
        #[arg(long)]
        listen: Option<String>,
        /// Simulated drivers (each with 3 drop-offs).
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u16).range(1..=200))]
        drivers: u16,
    },
    /// Mint a token with a tenant's configured HS256 secret (development and tests).
    Token {
        #[command(flatten)]
        at: Where,
        #[arg(long)]
        tenant: Option<String>,
        /// `admin`, `dispatcher`, `viewer`, `pharmacy_staff` or `driver`.
        #[arg(long)]
        role: String,
        #[arg(long)]
        sub: String,
        /// Device id (drivers).
        #[arg(long)]
        device: Option<String>,
        /// Lifetime: 90s, 15m, 1h, 12h.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Delivery-log tools.
    Log {
        #[command(subcommand)]
        command: LogCommand,
    },
    /// Create or upgrade the PostgreSQL schema of the delivery log.
    Migrate {
        /// A connection URL with the right to create tables (the owner).
        #[arg(long, env = "RXTRACK_POSTGRES_ADMIN_URL")]
        postgres: String,
        /// The role the servers connect as: it may then insert and read, nothing more.
        #[arg(long)]
        grant_to: Option<String>,
    },
}

#[derive(Subcommand)]
enum LogCommand {
    /// Check every tenant's hash chain offline; names the first bad event.
    Verify {
        #[command(flatten)]
        at: Where,
        /// Check the PostgreSQL log instead (a role that reads every row).
        #[arg(long)]
        postgres: Option<String>,
    },
}

fn load_config(at: &Where) -> anyhow::Result<(Config, bool)> {
    let Some(path) = &at.config else {
        let dir = at
            .data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        return Ok((Config::demo(&dir)?, true));
    };
    let mut c = Config::load(path)?;
    if let Some(d) = &at.data_dir {
        c.data_dir.clone_from(d);
    }
    Ok((c, false))
}

fn parse_ttl(s: &str) -> anyhow::Result<i64> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .with_context(|| format!("--ttl {s:?}: expected a number and s, m or h"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        _ => bail!("--ttl {s:?}: the unit must be s, m or h"),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .context("--ttl out of range")
}

fn token(
    at: &Where,
    tenant: Option<&str>,
    role: &str,
    sub: &str,
    device: Option<&str>,
    ttl: &str,
) -> anyhow::Result<()> {
    let (config, _) = load_config(at)?;
    let tenant = match tenant {
        Some(t) => config
            .tenant(t)
            .with_context(|| format!("tenant {t} is not configured"))?,
        None => config.tenants.first().context("no tenant configured")?,
    };
    let secret = tenant
        .hs256_secret
        .as_deref()
        .with_context(|| format!("tenant {} has no HS256 secret to sign with", tenant.id))?;
    let role = Role::parse(role).with_context(|| format!("unknown role {role:?}"))?;
    if role == Role::Driver && device.is_none() {
        bail!("a driver token needs --device");
    }
    let now = rxtrack_server::clock::now().as_secs();
    let claims = Claims {
        tid: tenant.id.to_string(),
        sub: sub.to_owned(),
        role,
        aud: AUDIENCE.to_owned(),
        iat: now,
        exp: now + parse_ttl(ttl)?,
        did: device.map(str::to_owned),
        auth_time: Some(now),
    };
    println!("{}", mint_hs256(secret, &claims));
    Ok(())
}

fn verify(at: &Where, postgres: Option<&str>) -> anyhow::Result<ExitCode> {
    let report = if let Some(url) = postgres {
        runtime()?
            .block_on(rxtrack_server::log::pg::verify_all(url))
            .context("verifying the PostgreSQL log")?
    } else {
        let dir = match (&at.data_dir, &at.config) {
            (Some(d), _) => d.clone(),
            (None, Some(_)) => load_config(at)?.0.data_dir,
            (None, None) => PathBuf::from(DEFAULT_DATA_DIR),
        };
        rxtrack_server::log::verify_dir(&dir.join("log"))?
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn quick_start(addr: &str, data_dir: &Path) {
    let url = format!("http://{addr}");
    println!(
        "\nNo configuration given: this is a single node with the demo tenant \"{DEMO_TENANT}\".
  data folder: {dir} (the tenant's signing secret is {dir}/demo-tenant.secret)

Mint tokens (run from this folder):
  rxtrack token --role dispatcher --sub alice
  rxtrack token --role driver --sub d1 --device phone-1 --ttl 12h

Create a delivery and stream a driver:
  T=$(rxtrack token --role dispatcher --sub alice)
  curl -s -X POST {url}/v1/deliveries -H \"Authorization: Bearer $T\" \\
    -d '{{\"id\":\"rx-1\",\"pickup\":{{\"lat\":60.1699,\"lng\":24.9384,\"radius_m\":60}},\"dropoff\":{{\"lat\":60.1718,\"lng\":24.9414,\"radius_m\":40}},\"recipient\":{{\"first_name\":\"Ana\"}}}}'
  curl -s -X PUT {url}/v1/drivers/d1/route -H \"Authorization: Bearer $T\" -d '{{\"stops\":[\"rx-1\"]}}'
  driver socket: ws://{addr}/v1/driver/ws (subprotocols \"rxtrack.v1, bearer.<driver token>\")
  events: curl -s {url}/v1/deliveries/rx-1/events -H \"Authorization: Bearer $T\"

Operations: {url}/healthz  {url}/readyz  {url}/metrics
Verify the log offline: rxtrack log verify
For production, write rxtrack.toml (see README.md) and run: rxtrack serve --config rxtrack.toml
",
        dir = data_dir.display()
    );
}

async fn serve(
    at: &Where,
    listen: Option<&str>,
    log_format: &str,
    demo_fleet: Option<u16>,
) -> anyhow::Result<()> {
    init_tracing(log_format);
    let (mut config, demo) = load_config(at)?;
    if let Some(l) = listen {
        config.listen = l
            .parse()
            .with_context(|| format!("--listen {l:?} is not an address"))?;
    }
    if demo_fleet.is_some() && config.roads.is_none() {
        // The demo fleet drives central Helsinki: its ETAs follow those streets.
        config.roads = Some(rxtrack_server::config::RoadsSource::Bundled("helsinki"));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding {}", config.listen))?;
    let addr = listener.local_addr()?.to_string();
    let data_dir = config.data_dir.clone();
    let shutdown = CancellationToken::new();
    // Recovery runs before the node says it is listening.
    let app = rxtrack_server::app::App::open(config, shutdown.clone())
        .await
        .context("opening the delivery log")?;
    println!("rxtrack listening on http://{addr}");
    if demo {
        quick_start(&addr, &data_dir);
    }
    if let Some(drivers) = demo_fleet {
        let urls =
            rxtrack_server::demo::start(app.clone(), listener.local_addr()?, usize::from(drivers))
                .await?;
        let now = rxtrack_server::clock::now().as_secs();
        let claims = Claims {
            tid: DEMO_TENANT.into(),
            sub: "demo-viewer".into(),
            role: Role::Viewer,
            aud: AUDIENCE.into(),
            iat: now,
            exp: now + 3600,
            did: None,
            auth_time: Some(now),
        };
        let secret = app
            .config
            .tenant(DEMO_TENANT)
            .and_then(|t| t.hs256_secret.clone())
            .context("the demo tenant has a secret")?;
        println!(
            "Demo fleet: {drivers} drivers on central Helsinki's streets, {} deliveries.\n\
             Live map: http://{addr}/dispatch  (paste this viewer token: {})\n\
             Tracking links (open one in a browser):",
            urls.len(),
            mint_hs256(&secret, &claims)
        );
        for u in urls.iter().take(3) {
            println!("  {u}");
        }
    }
    let on_signal = shutdown.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("signal received");
        on_signal.cancel();
    });
    rxtrack_server::server::run_app(listener, app).await
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            at,
            listen,
            log_format,
        } => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .context("starting the runtime")
            .and_then(|rt| rt.block_on(serve(&at, listen.as_deref(), &log_format, None)))
            .map(|()| ExitCode::SUCCESS),
        Command::Demo {
            data_dir,
            listen,
            drivers,
        } => {
            let at = Where {
                config: None,
                data_dir,
            };
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the runtime")
                .and_then(|rt| rt.block_on(serve(&at, listen.as_deref(), "text", Some(drivers))))
                .map(|()| ExitCode::SUCCESS)
        }
        Command::Token {
            at,
            tenant,
            role,
            sub,
            device,
            ttl,
        } => token(&at, tenant.as_deref(), &role, &sub, device.as_deref(), &ttl)
            .map(|()| ExitCode::SUCCESS),
        Command::Log {
            command: LogCommand::Verify { at, postgres },
        } => verify(&at, postgres.as_deref()),
        Command::Migrate { postgres, grant_to } => runtime().and_then(|rt| {
            let version = rt
                .block_on(rxtrack_server::log::pg::migrate(
                    &postgres,
                    grant_to.as_deref(),
                ))
                .context("migrating the PostgreSQL schema")?;
            println!("delivery log schema at version {version}");
            Ok(ExitCode::SUCCESS)
        }),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rxtrack: {e:#}");
            ExitCode::from(2)
        }
    }
}

//! The accept loop, connection limits, and draining on shutdown.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::App;

/// How often quiet drivers are looked for (their patients see "updating").
const QUIET_SCAN: Duration = Duration::from_secs(5);
use crate::config::Config;

/// How long draining may take before remaining connections are dropped.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);
/// Largest HTTP request head, bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Runs a node on `listener` until `shutdown` is cancelled, then drains:
/// stops accepting, closes sockets with 1001, lets requests finish, and
/// syncs the delivery log.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let app = App::open(config, shutdown)
        .await
        .context("opening the delivery log")?;
    run_app(listener, app).await
}

/// Like [`run`], for a node already opened with [`App::open`] (so that the
/// caller can announce readiness only once recovery is done).
pub async fn run_app(listener: TcpListener, app: Arc<App>) -> anyhow::Result<()> {
    let scanner = app.clone();
    app.tracker.spawn(async move {
        let mut tick = tokio::time::interval(QUIET_SCAN);
        loop {
            tokio::select! {
                () = scanner.shutdown.cancelled() => return,
                _ = tick.tick() => {
                    let now = crate::clock::now();
                    for t in scanner.tenants.values() {
                        t.refresh_quiet(now);
                    }
                }
            }
        }
    });
    if app.bus.shared() {
        let reporter = app.clone();
        app.tracker.spawn(async move {
            let mut tick = tokio::time::interval(crate::bus::REPORT_EVERY);
            loop {
                tokio::select! {
                    () = reporter.shutdown.cancelled() => return,
                    _ = tick.tick() => reporter.devices.renew_reports(reporter.bus.as_ref(), crate::clock::now()),
                }
            }
        });
    }
    serve(listener, app.clone()).await;
    tracing::info!("draining");
    app.tracker.close();
    if tokio::time::timeout(DRAIN_DEADLINE, app.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; dropping remaining connections");
    }
    app.log.close().await;
    tracing::info!("stopped");
    Ok(())
}

async fn serve(listener: TcpListener, app: Arc<App>) {
    let limit = app.conn_limit.clone();
    let router = crate::api::router(app.clone());
    loop {
        let permit = tokio::select! {
            () = app.shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            () = app.shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and similar: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(tower::ServiceExt::map_request(
            router.clone(),
            move |mut req: hyper::Request<hyper::body::Incoming>| {
                req.extensions_mut()
                    .insert(crate::ratelimit::PeerAddr(peer));
                req
            },
        ));
        let shutdown = app.shutdown.clone();
        let gauge = app.metrics.connections.with_label_values(&["http"]);
        // The authentication deadline: tokens arrive in the request headers.
        let header_timeout = Duration::from_millis(app.config.limits.header_timeout_ms);
        app.tracker.spawn(async move {
            gauge.inc();
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                () = shutdown.cancelled() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
            gauge.dec();
            drop(permit);
        });
    }
}

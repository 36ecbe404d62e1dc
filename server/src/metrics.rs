//! Every metric the server exports, by name, in one place.
//!
//! `dashboards/` uses these names verbatim. Labels are small closed sets
//! (a route template, a status code, a reason, a close code): never a tenant's
//! data, an identifier of a person, a coordinate or a token.

use prometheus::{
    Encoder as _, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub const CONNECTIONS: &str = "rxtrack_connections";
pub const PINGS_ACCEPTED: &str = "rxtrack_pings_accepted_total";
pub const PINGS_DUPLICATE: &str = "rxtrack_pings_duplicate_total";
pub const PINGS_REJECTED: &str = "rxtrack_pings_rejected_total";
pub const ACKS_SENT: &str = "rxtrack_acks_sent_total";
pub const WS_CLOSES: &str = "rxtrack_ws_closes_total";
pub const AUTH_FAILURES: &str = "rxtrack_auth_failures_total";
pub const LOG_APPENDS: &str = "rxtrack_log_appends_total";
pub const LOG_WRITE_ERRORS: &str = "rxtrack_log_write_errors_total";
pub const LOG_FSYNC_SECONDS: &str = "rxtrack_log_fsync_seconds";
pub const LOG_GROUP_SIZE: &str = "rxtrack_log_group_commit_events";
pub const HTTP_REQUESTS: &str = "rxtrack_http_requests_total";
pub const HTTP_SECONDS: &str = "rxtrack_http_request_seconds";
pub const DELIVERIES_ACTIVE: &str = "rxtrack_deliveries_active";
pub const SLOW_CLOSES: &str = "rxtrack_slow_closes_total";
pub const BUS_RESYNCS: &str = "rxtrack_bus_resyncs_total";
pub const FANOUT_SECONDS: &str = "rxtrack_ping_to_fanout_seconds";
pub const POSITIONS_CONFLATED: &str = "rxtrack_positions_conflated_total";

/// The registry and its handles.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Open connections by kind (`driver`, `http`).
    pub connections: IntGaugeVec,
    pub pings_accepted: IntCounter,
    pub pings_duplicate: IntCounter,
    /// Rejected pings by reason (`bad_ping`, `too_old`, `in_future`, …).
    pub pings_rejected: IntCounterVec,
    pub acks_sent: IntCounter,
    /// WebSocket closes sent by the server, by close code.
    pub ws_closes: IntCounterVec,
    /// Refused tokens by reason.
    pub auth_failures: IntCounterVec,
    pub log_appends: IntCounter,
    pub log_write_errors: IntCounter,
    pub log_fsync_seconds: Histogram,
    pub log_group_size: Histogram,
    /// HTTP requests by route template, method and status.
    pub http_requests: IntCounterVec,
    pub http_seconds: HistogramVec,
    /// Deliveries not yet in a final state, over all tenants.
    pub deliveries_active: IntGauge,
    /// Subscribers closed for not keeping up.
    pub slow_closes: IntCounter,
    /// Reconnections to Redis after which subscribers resynchronised.
    pub bus_resyncs: IntCounter,
    /// From a ping's arrival to its position leaving in a dispatcher frame
    /// (the oldest position in each frame).
    pub fanout_seconds: Histogram,
    /// Positions a dispatcher socket skipped because a newer one of the same
    /// driver replaced them before its next frame (latest wins).
    pub positions_conflated: IntCounter,
}

impl Metrics {
    /// Creates and registers every metric.
    ///
    /// # Panics
    /// Never in practice: names are constants, registered once.
    #[must_use]
    pub fn new() -> Self {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definitions are constant and valid");
                registry
                    .register(Box::new(m.clone()))
                    .expect("each metric is registered once");
                m
            }};
        }
        let fsync_buckets = vec![
            0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
        ];
        Self {
            connections: reg!(IntGaugeVec::new(
                Opts::new(CONNECTIONS, "Open connections by kind."),
                &["kind"]
            )),
            pings_accepted: reg!(IntCounter::new(PINGS_ACCEPTED, "Pings applied.")),
            pings_duplicate: reg!(IntCounter::new(
                PINGS_DUPLICATE,
                "Pings at or below the device's last seq, acknowledged without effect."
            )),
            pings_rejected: reg!(IntCounterVec::new(
                Opts::new(PINGS_REJECTED, "Pings refused, by reason."),
                &["reason"]
            )),
            acks_sent: reg!(IntCounter::new(ACKS_SENT, "Acks sent to drivers.")),
            ws_closes: reg!(IntCounterVec::new(
                Opts::new(WS_CLOSES, "WebSocket closes sent by the server, by code."),
                &["code"]
            )),
            auth_failures: reg!(IntCounterVec::new(
                Opts::new(AUTH_FAILURES, "Refused tokens, by reason."),
                &["reason"]
            )),
            log_appends: reg!(IntCounter::new(
                LOG_APPENDS,
                "Events made durable in the delivery log."
            )),
            log_write_errors: reg!(IntCounter::new(
                LOG_WRITE_ERRORS,
                "Delivery-log write or fsync failures (the log then refuses writes)."
            )),
            log_fsync_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(LOG_FSYNC_SECONDS, "Duration of one group-commit fdatasync.")
                    .buckets(fsync_buckets)
            )),
            log_group_size: reg!(Histogram::with_opts(
                HistogramOpts::new(LOG_GROUP_SIZE, "Events per group commit.").buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 1024.0, 4096.0
                ])
            )),
            http_requests: reg!(IntCounterVec::new(
                Opts::new(
                    HTTP_REQUESTS,
                    "HTTP requests by route template, method and status."
                ),
                &["route", "method", "status"]
            )),
            http_seconds: reg!(HistogramVec::new(
                HistogramOpts::new(HTTP_SECONDS, "HTTP request duration by route template."),
                &["route"]
            )),
            deliveries_active: reg!(IntGauge::new(
                DELIVERIES_ACTIVE,
                "Deliveries not yet delivered, failed or cancelled."
            )),
            fanout_seconds: reg!(Histogram::with_opts(
                HistogramOpts::new(FANOUT_SECONDS, "Ping arrival to dispatcher frame sent.")
                    .buckets(vec![
                        0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.5
                    ])
            )),
            positions_conflated: reg!(IntCounter::new(
                POSITIONS_CONFLATED,
                "Positions replaced by a newer one before a dispatcher frame carried them."
            )),
            slow_closes: reg!(IntCounter::new(
                SLOW_CLOSES,
                "Subscribers closed because they did not keep up."
            )),
            bus_resyncs: reg!(IntCounter::new(
                BUS_RESYNCS,
                "Reconnections to Redis after which every node republished its patient views and this node's dispatchers took a fresh snapshot."
            )),
            registry,
        }
    }

    /// The Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .is_err()
        {
            return String::new();
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

//! The delivery log: the CPU cost of chaining and sealing an event, and
//! durable appends per second with group commit (`fdatasync` before each
//! append resolves) at several numbers of concurrent writers.
//!
//! `cargo bench -p rxtrack-server --bench log_append`
//!
//! The log folder is created under `target/` so that fsync reaches the disk
//! this machine really writes to (not a tmpfs).
//!
//! With `RXTRACK_BENCH_POSTGRES` set to the URL of a migrated database (the
//! servers' role), the same appends go to the PostgreSQL log too
//! (`pg_durable_append`): one transaction per group, committed before the
//! appends resolve. `scripts/bench-pg-append` starts a PostgreSQL of its
//! own for it.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rxtrack_server::auth::Role;
use rxtrack_server::log::store::Recovery;
use rxtrack_server::log::{
    Actor, DataKey, Draft, EventKind, Pending, Store, StoredEvent, TenantChain, Where,
};
use rxtrack_server::metrics::Metrics;
use rxtrack_server::types::{DeliveryId, TenantId};

fn draft(i: i64) -> Draft {
    Draft {
        kind: EventKind::DropoffArrived,
        delivery_id: Some(DeliveryId::parse(&format!("rx-{i}")).expect("an id")),
        at: 1_764_072_000_000 + i,
        device_ts: Some(1_764_072_000_000 + i - 300),
        actor: Actor {
            role: Role::Driver,
            sub: "d1".into(),
            device: Some("phone-7".into()),
        },
        where_: Some(Where {
            lat: 60.1699,
            lng: 24.9384,
            acc: Some(6.5),
        }),
        data: serde_json::json!({"stop": 2}),
    }
}

fn acme() -> TenantId {
    TenantId::parse("acme").expect("an id")
}

fn bench_dir() -> PathBuf {
    let base = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench-log");
    std::fs::create_dir_all(&base).expect("bench folder");
    tempfile::tempdir_in(base).expect("temp folder").keep()
}

/// Rounds of `writers` appends in flight at once, each resolved once
/// durable. Events are chained before the clock starts, so the bench
/// measures the log: write, sync or commit, answer.
fn durable_rounds(
    b: &mut criterion::Bencher<'_>,
    rt: &tokio::runtime::Runtime,
    chain: &mut TenantChain,
    writers: i64,
    append: impl Fn(&[StoredEvent]) -> Pending,
) {
    let mut i = 0;
    b.iter_custom(|iters| {
        let rounds: Vec<Vec<_>> = (0..iters)
            .map(|_| {
                (0..writers)
                    .map(|_| {
                        i += 1;
                        chain.chain(draft(i)).expect("seal").0
                    })
                    .collect()
            })
            .collect();
        let started = Instant::now();
        for round in &rounds {
            rt.block_on(async {
                let pending: Vec<_> = round
                    .iter()
                    .map(|e| append(std::slice::from_ref(e)))
                    .collect();
                for p in pending {
                    p.await.expect("writer alive").expect("durable");
                }
            });
        }
        started.elapsed()
    });
}

fn bench(c: &mut Criterion) {
    let key = Arc::new(DataKey::from_bytes(&[7u8; 32]).expect("32 bytes"));

    let mut g = c.benchmark_group("log");
    g.throughput(Throughput::Elements(1));
    g.bench_function("chain_and_seal_event", |b| {
        let mut chain = TenantChain::new(acme(), key.clone(), None);
        let mut i = 0;
        b.iter(|| {
            i += 1;
            let (stored, _) = chain.chain(draft(i)).expect("seal");
            stored.to_line()
        });
    });
    g.finish();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("log_durable_append");
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(20);
    for writers in [1i64, 16, 256] {
        let dir = bench_dir();
        let store = Arc::new(
            Store::open(&dir, Arc::new(Metrics::new()), Recovery::default()).expect("open store"),
        );
        let mut chain = TenantChain::new(acme(), key.clone(), None);
        g.throughput(Throughput::Elements(writers.unsigned_abs()));
        g.bench_with_input(
            BenchmarkId::new("concurrent_writers", writers),
            &writers,
            |b, &w| durable_rounds(b, &rt, &mut chain, w, |e| store.append(e)),
        );
        rt.block_on(store.close());
        let _ = std::fs::remove_dir_all(&dir);
    }
    g.finish();
}

/// Durable appends to the PostgreSQL log, as above, one tenant per writer
/// count (each chain starts at the genesis).
fn bench_postgres(c: &mut Criterion) {
    use rxtrack_server::log::EventLog as _;
    use rxtrack_server::log::pg::PgLog;
    let Ok(url) = std::env::var("RXTRACK_BENCH_POSTGRES") else {
        return;
    };
    let key = Arc::new(DataKey::from_bytes(&[7u8; 32]).expect("32 bytes"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut g = c.benchmark_group("pg_durable_append");
    g.measurement_time(Duration::from_secs(8));
    g.sample_size(20);
    let run = std::process::id();
    for writers in [1i64, 16, 256] {
        let tenant = TenantId::parse(&format!("bench-{run}-{writers}")).expect("an id");
        let log = rt
            .block_on(PgLog::connect(&url, vec![tenant.clone()]))
            .expect("connect to RXTRACK_BENCH_POSTGRES");
        let mut chain = TenantChain::new(tenant, key.clone(), None);
        g.throughput(Throughput::Elements(writers.unsigned_abs()));
        g.bench_with_input(
            BenchmarkId::new("concurrent_writers", writers),
            &writers,
            |b, &w| durable_rounds(b, &rt, &mut chain, w, |e| log.append(e)),
        );
        rt.block_on(log.close());
    }
    g.finish();
}

criterion_group!(benches, bench, bench_postgres);
criterion_main!(benches);

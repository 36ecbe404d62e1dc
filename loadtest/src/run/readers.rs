//! What the simulated clients read: acks and errors on driver sockets,
//! positions and events on dispatcher sockets, snapshots on patient
//! sockets, each matched to the ping that caused it.

use super::*;

/// What the generator reads of a dispatcher frame.
#[derive(serde::Deserialize)]
pub(super) struct PositionsFrame<'a> {
    #[serde(borrow, default)]
    drivers: Vec<PositionTs<'a>>,
}

#[derive(serde::Deserialize)]
pub(super) struct PositionTs<'a> {
    #[serde(borrow)]
    driver_id: std::borrow::Cow<'a, str>,
    ts: i64,
}

pub(super) async fn read_dispatcher(mut ws: Ws, prefix: String, shared: Arc<Mutex<Shared>>) {
    while let Some(Ok(m)) = ws.next().await {
        let now = Instant::now();
        if let Some(code) = close_code(&m) {
            *lock(&shared)
                .closes
                .entry(format!("dispatcher {code}"))
                .or_default() += 1;
            break;
        }
        let Message::Text(t) = m else { continue };
        // Position frames start with their type; events and delivery
        // changes are small JSON objects with keys in any order.
        if !t.as_str().starts_with(r#"{"type":"drivers""#)
            && !t.as_str().starts_with(r#"{"type":"snapshot""#)
        {
            note_event_or_delivery(t.as_str(), &shared);
            continue;
        }
        // Typed and borrowed: a frame holds every driver of the tenant (about
        // 1 MB at 5,000 drivers, five times a second), and parsing it into a
        // `Value` stalled the generator's other sockets for milliseconds.
        let Ok(frame) = serde_json::from_str::<PositionsFrame<'_>>(t.as_str()) else {
            continue;
        };
        let mut s = lock(&shared);
        s.messages += 1;
        for p in &frame.drivers {
            let idx = p
                .driver_id
                .strip_prefix(prefix.as_str())
                .and_then(|d| d.parse().ok());
            if let Some(i) = idx
                && let Some(sent) = s.sent_by_ts.get(&(i, p.ts)).copied()
                && s.measure_from.is_some_and(|from| sent >= from)
            {
                s.dispatcher.record_us(
                    u64::try_from(now.duration_since(sent).as_micros()).unwrap_or(u64::MAX),
                );
            }
        }
    }
}

/// Records an arrived event's fix time, or a delivery's point estimate.
pub(super) fn note_event_or_delivery(text: &str, shared: &Mutex<Shared>) {
    let Ok(v) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let recv = now_ms();
    let mut s = lock(shared);
    s.messages += 1;
    if v["type"] == "delivery" {
        if let Some(id) = v["id"].as_str() {
            let point = v["eta_at"].as_i64();
            s.points
                .entry(id.to_owned())
                .or_default()
                .push((recv, point));
        }
        return;
    }
    let (Some(id), Some(ts)) = (v["delivery_id"].as_str(), v["device_ts"].as_i64()) else {
        return;
    };
    match v["kind"].as_str() {
        Some("dropoff.arrived") => s.dropoff_arrived.entry(id.to_owned()).or_default().push(ts),
        Some("pickup.arrived") => s.pickup_arrived.entry(id.to_owned()).or_default().push(ts),
        _ => {}
    }
}

pub(super) async fn read_patient(mut ws: Ws, n: usize, driver: usize, shared: Arc<Mutex<Shared>>) {
    let mut last = 0usize;
    let mut first = true;
    while let Some(Ok(m)) = ws.next().await {
        if let Some(code) = close_code(&m) {
            *lock(&shared)
                .closes
                .entry(format!("patient {code}"))
                .or_default() += 1;
            break;
        }
        let Message::Text(t) = m else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        let recv = now_ms();
        let mut s = lock(&shared);
        s.messages += 1;
        let allowed = [
            "status",
            "stops_before",
            "eta",
            "updating",
            "display_name",
            "updated_at",
        ];
        if v.as_object()
            .is_none_or(|o| o.keys().any(|k| !allowed.contains(&k.as_str())))
        {
            s.violations += 1;
        }
        let rank = STATUS_ORDER
            .iter()
            .position(|x| v["status"] == *x)
            .unwrap_or(0);
        last = next_status_rank(last, rank, &mut s.out_of_order);
        // The first message is the snapshot as it stood; later ones are
        // changes, timed from the ping that caused them and from when the
        // server made them.
        if let Some(u) = v["updated_at"].as_i64().filter(|_| !first) {
            s.change
                .record_us(u64::try_from((recv - u).max(0) * 1000).unwrap_or(0));
            let sends = s.sends.get(driver).map_or(&[][..], Vec::as_slice);
            match cause_of_patient_update(sends, u, CAUSE_WINDOW_MS) {
                Some(cause) => {
                    let us = u64::try_from((recv - cause).max(0) * 1000).unwrap_or(0);
                    if cause >= s.measure_from_ms {
                        s.patient.record_us(us);
                    } else {
                        s.warmup_patient.record_us(us);
                    }
                }
                None => s.patient_without_ping += 1,
            }
        }
        first = false;
        let window = v["eta"]["from"].as_i64().zip(v["eta"]["to"].as_i64());
        s.windows.entry(n).or_default().push((recv, window));
    }
}

/// Reads a driver's acks (timing every ping they cover) and errors.
pub(super) async fn read_driver(
    mut rx: futures_util::stream::SplitStream<Ws>,
    i: usize,
    shared: Arc<Mutex<Shared>>,
    sent_at: SentAt,
) {
    while let Some(Ok(m)) = rx.next().await {
        let now = Instant::now();
        if let Some(code) = close_code(&m) {
            *lock(&shared)
                .closes
                .entry(format!("driver {code}"))
                .or_default() += 1;
            break;
        }
        let Message::Text(t) = m else { continue };
        let Ok(v) = serde_json::from_str::<Value>(t.as_str()) else {
            continue;
        };
        match v["type"].as_str() {
            Some("ack") => {
                let seq = v["seq"].as_u64().unwrap_or(0);
                // The ack covers every unacknowledged ping up to `seq`.
                let sent: Vec<Instant> = {
                    let mut all = sent_at.lock().unwrap_or_else(PoisonError::into_inner);
                    let mine = &mut all[i];
                    let covered = mine.partition_point(|&(q, _)| q <= seq);
                    mine.drain(..covered).map(|(_, t)| t).collect()
                };
                let mut s = lock(&shared);
                for t in sent {
                    let us = u64::try_from(now.duration_since(t).as_micros()).unwrap_or(u64::MAX);
                    if s.measure_from.is_some_and(|from| t >= from) {
                        s.ack.record_us(us);
                    } else {
                        s.warmup_ack.record_us(us);
                    }
                    s.acked += 1;
                }
            }
            Some("error") => {
                let code = v["code"].as_str().unwrap_or("?").to_owned();
                *lock(&shared).errors.entry(code).or_default() += 1;
            }
            _ => {}
        }
    }
}

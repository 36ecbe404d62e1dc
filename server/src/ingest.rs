//! Driver ingest: `GET /v1/driver/ws`.
//!
//! One task per socket reads messages in order, checks and applies pings,
//! and answers with cumulative acks. A device has at most one live socket: a
//! new login replaces the old one (closed with 4409). Per-device state (last
//! seq, last fix, rate-limit buckets) outlives the socket, so a reconnect
//! neither re-applies old pings nor resets the rate limit.
//!
//! An ack is sent only once every delivery-log event the acknowledged pings
//! caused (arrived, departed, approaching) is durable: they go through the
//! tenant's commit path like any command.

use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use futures_util::StreamExt as _;

use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, error::CapacityError};

use crate::app::App;
use crate::auth::{AuthError, Principal, Role};
use crate::bus::Kick;
use crate::devices::DeviceLive;
use crate::domain::Action;
use crate::protocol::{DriverMsg, MAX_BATCH, PingIn, ServerMsg};
use crate::socket::Close;

use crate::types::{DeviceId, TenantId};
use crate::ws::{self, Socket, close};

/// Serves one driver socket until it ends; returns how.
pub async fn run(app: &App, ws: &mut Socket, auth: Result<Principal, AuthError>) -> Close {
    let principal = match auth {
        Ok(p) => p,
        Err(e) => {
            app.metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            return Some((close::UNAUTHORIZED, e.to_string().into()));
        }
    };
    let (true, Some(device)) = (
        Action::StreamPositions.allowed(principal.role),
        principal.device.clone(),
    ) else {
        return Some((
            close::FORBIDDEN,
            "the driver stream needs a driver token".into(),
        ));
    };
    let Some(tenant) = app.tenant(&principal.tenant) else {
        return Some((close::UNAUTHORIZED, "unknown tenant".into()));
    };
    if tenant.read(|book, _| book.is_revoked(&device)) {
        return Some((close::FORBIDDEN, "device revoked".into()));
    }

    let acked = app.bus.acked_seq(&principal.tenant, &device).await;
    // A driver coming from another node carries on its tracking there.
    if let Some(carried) = app.bus.carried(&principal.tenant, &principal.sub).await {
        tenant.resume(&principal.sub, carried);
    }
    let slot = app.devices.slot(
        &principal.tenant,
        &device,
        &principal.sub,
        &app.config.limits,
        acked,
    );
    let crate::bus::Session {
        id: session_id,
        kicked: mut kick_rx,
    } = app.bus.open_session(&principal.tenant, &device);
    // A revoke that became durable between the check above and the session
    // kicked nobody: look again now that the session can be kicked.
    if tenant.read(|book, _| book.is_revoked(&device)) {
        app.bus
            .close_session(&principal.tenant, &device, session_id);
        return Some((close::FORBIDDEN, "device revoked".into()));
    }
    slot.lock().unwrap_or_else(PoisonError::into_inner).driver = principal.sub.clone();
    report(app, &principal.tenant, &device, true);
    tracing::debug!(tenant = %principal.tenant, session = session_id, "driver connected");

    let mut session = Session {
        app,
        carried: None,
        principal,
        device,
        slot: &slot,
    };
    let end = session.serve(ws, &mut kick_rx).await;
    app.bus
        .close_session(&session.principal.tenant, &session.device, session_id);
    // What this node last knew of the driver goes along (a node that took
    // the driver up since keeps its own, fresher state).
    if app.bus.shared()
        && let Some((state, _)) = app
            .tenant(&session.principal.tenant)
            .and_then(|t| t.carry(&session.principal.sub, true, None))
    {
        app.bus
            .carry(&session.principal.tenant, &session.principal.sub, &state);
    }
    // Still connected if a newer session of the device is here.
    let connected = app
        .bus
        .connected(&session.principal.tenant, &session.device);
    report(app, &session.principal.tenant, &session.device, connected);
    tracing::debug!(session = session_id, "driver disconnected");
    end.map(|(code, reason)| (code, reason.into()))
}

/// Tells other nodes the device connected here, or that its session here
/// ended.
fn report(app: &App, tenant: &TenantId, device: &DeviceId, connected: bool) {
    if app.bus.shared()
        && let Some(r) = app
            .devices
            .report(tenant, device, connected, crate::clock::now())
    {
        app.bus.report_device(tenant, device, &r, !connected);
    }
}

/// How often a driver's tracking state goes to the other nodes when
/// nothing that decides its events changed (see `Tenant::carry`).
const CARRY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

struct Session<'a> {
    app: &'a App,
    /// When this driver's tracking state last went to the other nodes, and
    /// the digest of its detector then.
    carried: Option<(Instant, Option<u64>)>,
    principal: Principal,
    device: DeviceId,
    slot: &'a Mutex<DeviceLive>,
}

/// What to do after handling one message.
enum Next {
    Continue,
    Close(u16, &'static str),
}

impl Session<'_> {
    /// Serves the socket; returns the close code to send, if the server closes.
    async fn serve(
        &mut self,
        ws: &mut Socket,
        kick: &mut oneshot::Receiver<Kick>,
    ) -> Option<(u16, &'static str)> {
        let hello = ServerMsg::Config {
            ping_interval_ms: self.app.config.limits.ping_interval_ms,
        };
        if self.send(ws, &hello).await.is_err() {
            return None;
        }
        let mut expires = ws::token_deadline(self.principal.exp);
        loop {
            tokio::select! {
                biased;
                () = self.app.shutdown.cancelled() => return Some((close::GOING_AWAY, "server draining")),
                why = &mut *kick => {
                    return Some(match why {
                        Ok(Kick::Revoked) => (close::FORBIDDEN, "device revoked"),
                        _ => (close::REPLACED, "replaced by a newer connection of this device"),
                    });
                }
                () = tokio::time::sleep_until(expires) => return Some((close::UNAUTHORIZED, "token expired")),
                msg = ws.next() => {
                    let next = match msg {
                        Some(Err(WsError::Capacity(CapacityError::MessageTooLong { .. }))) => {
                            Next::Close(close::TOO_BIG, "message too large")
                        }
                        None | Some(Ok(Message::Close(_)) | Err(_)) => return None,
                        Some(Ok(Message::Text(t))) => self.on_text(ws, t.as_str(), &mut expires).await,
                        Some(Ok(Message::Binary(_))) => {
                            Next::Close(close::PROTOCOL, "binary frames are not part of the protocol")
                        }
                        Some(Ok(_)) => Next::Continue,
                    };
                    match next {
                        Next::Continue => {}
                        Next::Close(code, reason) => return Some((code, reason)),
                    }
                }
            }
        }
    }

    async fn send(&self, ws: &mut Socket, msg: &ServerMsg) -> Result<(), ()> {
        let text = serde_json::to_string(msg).map_err(|_| ())?;
        if ws::send_text(ws, text.into()).await {
            Ok(())
        } else {
            Err(())
        }
    }

    async fn error(&self, ws: &mut Socket, code: &str, message: String, seq: Option<u64>) -> Next {
        let msg = ServerMsg::Error {
            code: code.to_owned(),
            message,
            seq,
        };
        if self.send(ws, &msg).await.is_err() {
            return Next::Close(close::GOING_AWAY, "write failed");
        }
        Next::Continue
    }

    async fn on_text(
        &mut self,
        ws: &mut Socket,
        text: &str,
        expires: &mut tokio::time::Instant,
    ) -> Next {
        let now = Instant::now();
        if !self.live().messages.take(1.0, now) {
            self.app
                .metrics
                .pings_rejected
                .with_label_values(&["rate_limited"])
                .inc();
            return Next::Close(close::RATE_LIMITED, "too many messages");
        }
        let msg = match serde_json::from_str::<DriverMsg>(text) {
            Ok(m) => m,
            Err(e) => return self.on_bad_message(ws, text, &e).await,
        };
        match msg {
            DriverMsg::Ping(p) => self.on_pings(ws, std::slice::from_ref(&p)).await,
            DriverMsg::Batch { pings } => {
                if pings.len() > MAX_BATCH {
                    return self
                        .error(
                            ws,
                            "batch_too_large",
                            format!(
                                "a batch holds at most {MAX_BATCH} pings, got {}",
                                pings.len()
                            ),
                            None,
                        )
                        .await;
                }
                if pings.windows(2).any(|w| w[0].seq >= w[1].seq) {
                    return self
                        .error(
                            ws,
                            "bad_batch",
                            "pings in a batch must have strictly ascending seq".into(),
                            None,
                        )
                        .await;
                }
                self.on_pings(ws, &pings).await
            }
            DriverMsg::Refresh { token } => self.on_refresh(&token, expires),
        }
    }

    fn live(&self) -> std::sync::MutexGuard<'_, DeviceLive> {
        self.slot.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A message that did not parse: not JSON is a protocol violation; an
    /// unknown type or a ping with wrong types gets an error and the socket lives on.
    async fn on_bad_message(&self, ws: &mut Socket, text: &str, e: &serde_json::Error) -> Next {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            self.app
                .metrics
                .pings_rejected
                .with_label_values(&["malformed"])
                .inc();
            return Next::Close(close::PROTOCOL, "malformed JSON");
        };
        let kind = value.get("type").and_then(serde_json::Value::as_str);
        match kind {
            Some("ping" | "batch" | "refresh") => {
                self.app
                    .metrics
                    .pings_rejected
                    .with_label_values(&["bad_message"])
                    .inc();
                let seq = value.get("seq").and_then(serde_json::Value::as_u64);
                let code = if kind == Some("ping") {
                    "bad_ping"
                } else {
                    "bad_message"
                };
                self.error(ws, code, e.to_string(), seq).await
            }
            Some(_) => {
                self.error(ws, "unknown_type", "unknown message type".into(), None)
                    .await
            }
            None => {
                self.error(
                    ws,
                    "bad_message",
                    "a message needs a string \"type\"".into(),
                    None,
                )
                .await
            }
        }
    }

    async fn on_pings(&mut self, ws: &mut Socket, pings: &[PingIn]) -> Next {
        let now = crate::clock::now();
        let (applied, ack) = {
            let mut live = self.live();
            // Only new pings spend the budget: a replayed batch is free.
            let fresh = live.cursor.fresh(pings);
            if !live.pings.take(fresh as f64, Instant::now()) {
                drop(live);
                self.app
                    .metrics
                    .pings_rejected
                    .with_label_values(&["rate_limited"])
                    .inc();
                return Next::Close(close::RATE_LIMITED, "too many pings");
            }
            let applied = live.cursor.apply(pings, now);
            if !applied.accepted.is_empty() {
                live.last_seen = Some(now);
            }
            (applied, live.cursor.last_seq)
        };
        // Dispatchers see the newest position (encoded once, latest wins).
        if let Some(last) = applied.accepted.iter().max_by_key(|f| f.ts) {
            self.app
                .bus
                .position(&self.principal.tenant, &self.principal.sub, last);
        }
        // The events these fixes cause are durable before the ack goes out.
        if self.app.config.proximity
            && !applied.accepted.is_empty()
            && let Some(tenant) = self.app.tenant(&self.principal.tenant)
        {
            let durable = tenant
                .observe(&self.principal, &applied.accepted, now)
                .await;
            if let Err(e) = durable {
                tracing::error!(error = %e, "proximity events could not be made durable; closing the driver socket");
                return Next::Close(close::GOING_AWAY, "delivery log unavailable");
            }
        }
        let m = &self.app.metrics;
        m.pings_accepted.inc_by(applied.accepted.len() as u64);
        m.pings_duplicate.inc_by(applied.duplicates as u64);
        // A refused ping is consumed too: the error says why, and the ack
        // that follows tells the app to drop it from its buffer.
        for (seq, err) in applied.refused {
            m.pings_rejected.with_label_values(&[err.code()]).inc();
            if let Next::Close(c, r) = self.error(ws, err.code(), err.to_string(), Some(seq)).await
            {
                return Next::Close(c, r);
            }
        }
        if self.send(ws, &ServerMsg::Ack { seq: ack }).await.is_err() {
            return Next::Close(close::GOING_AWAY, "write failed");
        }
        self.app
            .bus
            .acked(&self.principal.tenant, &self.device, ack);
        // Another node could take the driver up from here: its state goes
        // along whenever what decides its events changed, and every few
        // seconds besides (its newest fix, speed and heading).
        if self.app.bus.shared() {
            let due = self
                .carried
                .is_none_or(|(at, _)| at.elapsed() >= CARRY_EVERY);
            let told = self.carried.and_then(|(_, digest)| digest);
            if let Some((state, digest)) = self
                .app
                .tenant(&self.principal.tenant)
                .and_then(|t| t.carry(&self.principal.sub, due, told))
            {
                self.app
                    .bus
                    .carry(&self.principal.tenant, &self.principal.sub, &state);
                self.carried = Some((Instant::now(), digest));
            }
        }
        m.acks_sent.inc();
        Next::Continue
    }

    fn on_refresh(&mut self, token: &str, expires: &mut tokio::time::Instant) -> Next {
        match self.app.verifier.verify(token, crate::clock::now()) {
            Err(e) => {
                self.app
                    .metrics
                    .auth_failures
                    .with_label_values(&[e.reason()])
                    .inc();
                Next::Close(close::UNAUTHORIZED, "refresh token invalid")
            }
            Ok(p) => {
                if p.tenant != self.principal.tenant
                    || p.sub != self.principal.sub
                    || p.role != Role::Driver
                    || p.device.as_ref() != Some(&self.device)
                {
                    return Next::Close(
                        close::FORBIDDEN,
                        "refresh token is for another driver or device",
                    );
                }
                *expires = ws::token_deadline(p.exp);
                self.principal = p;
                Next::Continue
            }
        }
    }
}

//! What every socket (driver, dispatcher, patient) shares, written once:
//! the checked upgrade and a connection permit ([`Upgrade`]), a task the
//! node tracks while draining, the gauge of its kind, the close handshake
//! with the code its session chose, and the heartbeat ([`Heartbeat`]).

use std::borrow::Cow;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, Response};
use tokio::sync::OwnedSemaphorePermit;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::app::App;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::ws::{self, Handshake, Socket, close};

/// How a session ends: the close code and reason to send, or `None` when
/// the client closed or vanished first.
pub type Close = Option<(u16, Cow<'static, str>)>;

/// An upgrade request that passed the handshake checks and holds one
/// connection permit.
#[derive(Debug)]
pub struct Upgrade {
    hs: Handshake,
    permit: OwnedSemaphorePermit,
    cfg: WebSocketConfig,
}

impl Upgrade {
    /// Checks the handshake and takes a permit (503 when the node is full).
    /// `max_message`: the largest message the client may send;
    /// `max_write`: the largest the server may have to send.
    pub fn new(
        app: &App,
        req: &mut Request<Body>,
        max_message: usize,
        max_write: usize,
    ) -> Result<Self, ApiError> {
        let hs = ws::handshake(req)?;
        let permit = app.socket_permit()?;
        Ok(Self {
            hs,
            permit,
            cfg: ws::config(max_message, max_write),
        })
    }

    /// The token the client presented (header or subprotocol), if any.
    #[must_use]
    pub fn token(&self) -> Option<&str> {
        self.hs.token.as_deref()
    }

    /// Answers 101 and serves the socket in a task the node tracks:
    /// `kind`'s connection gauge counts it while `session` runs, the close
    /// code `session` returns is sent with a close handshake, and the
    /// permit is held until the socket is gone.
    pub fn serve<F, Fut>(self, app: &Arc<App>, kind: &'static str, session: F) -> Response<Body>
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = (Socket, Close)> + Send + 'static,
    {
        let Self { hs, permit, cfg } = self;
        let app2 = app.clone();
        app.tracker.spawn(async move {
            if let Some(sock) = ws::accept(hs.on_upgrade, cfg).await {
                let gauge = app2.metrics.connections.with_label_values(&[kind]);
                gauge.inc();
                let (mut sock, end) = session(sock).await;
                if let Some((code, reason)) = end {
                    ws::close_with(&mut sock, &app2.metrics, code, &reason).await;
                }
                gauge.dec();
            }
            drop(permit);
        });
        hs.response
    }
}

/// A server heartbeat: a ping every interval; a client that leaves three
/// in a row unanswered is closed as too slow.
#[derive(Debug)]
pub struct Heartbeat {
    every: Duration,
    tick: tokio::time::Interval,
    last_pong: Instant,
}

impl Heartbeat {
    /// Starts beating (the first ping goes out one interval from now).
    pub async fn start(every: Duration) -> Self {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        Self {
            every,
            tick,
            last_pong: Instant::now(),
        }
    }

    /// Waits for the next beat.
    pub async fn due(&mut self) {
        self.tick.tick().await;
    }

    /// The client answered.
    pub fn pong(&mut self) {
        self.last_pong = Instant::now();
    }

    /// On a beat: closes a client that stopped answering, else pings it.
    /// `Err`: how the session ends.
    pub async fn beat(&mut self, sock: &mut Socket, metrics: &Metrics) -> Result<(), Close> {
        if self.last_pong.elapsed() > self.every * 3 {
            metrics.slow_closes.inc();
            return Err(Some((close::SLOW, "no answer to heartbeats".into())));
        }
        if ws::send_ping(sock).await {
            Ok(())
        } else {
            Err(None)
        }
    }
}

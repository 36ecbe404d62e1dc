//! Helpers for the black-box tests: start the real `rxtrack` binary on a free
//! port with a temporary data folder, mint tokens, and talk to it over real
//! HTTP and WebSocket connections. Nothing here links the server's code.

#![allow(
    clippy::missing_panics_doc,
    reason = "test helpers fail the test by panicking, with a message"
)]
pub mod browser;
pub mod nodes;
pub mod pg;
pub mod proxy;
pub mod redis;

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, protocol::CloseFrame};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secrets of the two test tenants.
pub const ACME_SECRET: &str = "acme-test-secret-0123456789abcdef0123";
pub const BETA_SECRET: &str = "beta-test-secret-0123456789abcdef0123";

/// The path of the `rxtrack` binary under test.
///
/// # Panics
/// When the binary has not been built (`cargo test --workspace` builds it).
pub fn binary() -> PathBuf {
    if let Ok(p) = std::env::var("RXTRACK_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR").map_or_else(
        |_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"),
        PathBuf::from,
    );
    let p = target.join("debug/rxtrack");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --bin rxtrack` (cargo test --workspace does)",
        p.display()
    );
    p
}

/// Now, in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis(),
    )
    .unwrap_or(0)
}

/// Now, in seconds since the epoch.
pub fn now_s() -> i64 {
    now_ms() / 1000
}

/// Signs arbitrary claims with HS256.
pub fn sign_hs256(secret: &[u8], header: &Value, claims: &Value) -> String {
    let h = URL_SAFE_NO_PAD.encode(serde_json::to_vec(header).unwrap_or_default());
    let p = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{h}.{p}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let s = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&key, signed.as_bytes()).as_ref());
    format!("{signed}.{s}")
}

/// Standard claims for a tenant, role and subject, valid for 10 minutes.
pub fn claims(tenant: &str, role: &str, sub: &str, device: Option<&str>) -> Value {
    let now = now_s();
    let mut c = json!({"tid": tenant, "sub": sub, "role": role, "aud": "rxtrack",
                       "iat": now, "exp": now + 600, "auth_time": now});
    if let Some(d) = device {
        c["did"] = json!(d);
    }
    c
}

fn secret_of(tenant: &str) -> &'static [u8] {
    if tenant == "beta" {
        BETA_SECRET.as_bytes()
    } else {
        ACME_SECRET.as_bytes()
    }
}

/// A valid token for a tenant's staff member.
pub fn staff(tenant: &str, role: &str, sub: &str) -> String {
    sign_hs256(
        secret_of(tenant),
        &json!({"alg":"HS256","typ":"JWT"}),
        &claims(tenant, role, sub, None),
    )
}

/// A valid driver token.
pub fn driver(tenant: &str, sub: &str, device: &str) -> String {
    sign_hs256(
        secret_of(tenant),
        &json!({"alg":"HS256","typ":"JWT"}),
        &claims(tenant, "driver", sub, Some(device)),
    )
}

/// Signs claims for a tenant with its secret.
pub fn token_with(tenant: &str, claims: &Value) -> String {
    sign_hs256(
        secret_of(tenant),
        &json!({"alg":"HS256","typ":"JWT"}),
        claims,
    )
}

/// A running `rxtrack serve`.
#[derive(Debug)]
pub struct Server {
    pub dir: tempfile::TempDir,
    pub addr: String,
    child: Option<Child>,
    /// Everything the server wrote on stdout and stderr.
    pub output: Arc<Mutex<String>>,
    extra_config: String,
    env: Vec<(String, String)>,
    /// Another server's data folder to use (several nodes sharing tenant keys).
    shared_data: Option<PathBuf>,
}

impl Server {
    /// Starts a server with two tenants (`acme`, `beta`).
    pub fn start() -> Self {
        Self::start_with("", &[])
    }

    /// Starts a server with extra TOML (top-level keys or whole tables, placed
    /// before the tenants) and extra environment.
    ///
    /// # Panics
    /// When the server does not start.
    pub fn start_with(extra_config: &str, env: &[(&str, &str)]) -> Self {
        Self::start_node(extra_config, env, None)
    }

    /// Starts a server whose data folder is `data` (another node's: the
    /// tenants' data keys are shared by every node of a deployment).
    ///
    /// # Panics
    /// When the server does not start.
    pub fn start_node(extra_config: &str, env: &[(&str, &str)], data: Option<PathBuf>) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("acme.secret"), ACME_SECRET).expect("write secret");
        let mut s = Self {
            dir,
            addr: String::new(),
            child: None,
            output: Arc::new(Mutex::new(String::new())),
            extra_config: extra_config.to_owned(),
            env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
            shared_data: data,
        };
        s.spawn();
        s
    }

    fn config_path(&self) -> PathBuf {
        self.dir.path().join("rxtrack.toml")
    }

    /// The data folder.
    pub fn data_dir(&self) -> PathBuf {
        self.shared_data
            .clone()
            .unwrap_or_else(|| self.dir.path().join("data"))
    }

    fn spawn(&mut self) {
        if let Err(out) = self.try_spawn() {
            panic!("rxtrack did not start:\n{out}");
        }
    }

    /// Starts the process; on failure returns what it printed.
    fn try_spawn(&mut self) -> Result<(), String> {
        let listen = if self.addr.is_empty() {
            "127.0.0.1:0".to_owned()
        } else {
            self.addr.clone()
        };
        let config = format!(
            "listen = \"{listen}\"\npublic_url = \"https://track.example.test\"\ndata_dir = \"{}\"\n{}\n\
             [[tenants]]\nid = \"acme\"\nhs256_secret_file = \"acme.secret\"\ndisplay_name = \"Apteekki Acme\"\n\
             [[tenants]]\nid = \"beta\"\nhs256_secret_env = \"BETA_JWT\"\n",
            self.data_dir().display(),
            self.extra_config
        );
        std::fs::write(self.config_path(), config).expect("write config");
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--config")
            .arg(self.config_path())
            .env("BETA_JWT", BETA_SECRET)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start rxtrack");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        let out = self.output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(a) = line.strip_prefix("rxtrack listening on http://") {
                    let _ = tx.send(a.to_owned());
                }
                push(&out, &line);
            }
        });
        let out = self.output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                push(&out, &line);
            }
        });
        if let Ok(addr) = rx.recv_timeout(Duration::from_secs(30)) {
            self.addr = addr;
            self.child = Some(child);
            return Ok(());
        }
        let _ = child.kill();
        let _ = child.wait();
        // Let the reader threads catch the last lines.
        std::thread::sleep(Duration::from_millis(100));
        Err(self.output())
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// The base URL.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Kills the process with SIGKILL (a crash) and waits for it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    ///
    /// # Panics
    /// When the server does not exit within 30 s.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        terminate(&mut self.child.take().expect("server running"))
    }

    /// Starts the server again on the same address and data folder.
    ///
    /// # Panics
    /// When it does not start.
    pub fn restart(&mut self) {
        if let Err(out) = self.try_restart() {
            panic!("restart failed:\n{out}");
        }
    }

    /// Starts the server again; on failure returns what it printed.
    pub fn try_restart(&mut self) -> Result<(), String> {
        self.kill9();
        if let Ok(mut o) = self.output.lock() {
            o.clear();
        }
        self.try_spawn()
    }

    /// Whether the process has exited, and how.
    pub fn exit_status(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// Runs another `rxtrack` subcommand against this server's configuration.
    pub fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(self.config_path())
            .env("BETA_JWT", BETA_SECRET)
            .output()
            .expect("run rxtrack")
    }

    /// A snapshot of everything the server printed so far.
    pub fn output(&self) -> String {
        self.output.lock().map(|o| o.clone()).unwrap_or_default()
    }
}

fn push(out: &Mutex<String>, line: &str) {
    if let Ok(mut o) = out.lock() {
        o.push_str(line);
        o.push('\n');
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Sends SIGTERM to a process and waits (30 s at most) for its exit status.
///
/// # Panics
/// When it does not exit in time (it is then killed).
pub fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    for _ in 0..300 {
        if let Ok(Some(status)) = child.try_wait() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    panic!("the process did not exit after SIGTERM");
}

/// An HTTP client for the API.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// A JSON response: status and body.
pub async fn call(req: reqwest::RequestBuilder) -> (u16, Value) {
    let res = req.send().await.expect("request sent");
    let status = res.status().as_u16();
    let text = res.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

impl Server {
    /// `GET path` with a bearer token: status and body.
    pub async fn get(&self, path: &str, token: impl std::fmt::Display) -> (u16, Value) {
        call(http().get(self.url(path)).bearer_auth(token)).await
    }

    /// `POST path` with a bearer token and a JSON body: status and body.
    pub async fn post(
        &self,
        path: &str,
        token: impl std::fmt::Display,
        body: &Value,
    ) -> (u16, Value) {
        call(http().post(self.url(path)).bearer_auth(token).json(body)).await
    }

    /// `PUT path` with a bearer token and a JSON body: status and body.
    pub async fn put(
        &self,
        path: &str,
        token: impl std::fmt::Display,
        body: &Value,
    ) -> (u16, Value) {
        call(http().put(self.url(path)).bearer_auth(token).json(body)).await
    }
}

/// A delivery body with a circle pickup and drop-off in central Helsinki.
pub fn delivery_body(id: &str) -> Value {
    json!({
        "id": id,
        "pickup": {"lat": 60.1699, "lng": 24.9384, "radius_m": 60},
        "dropoff": {"lat": 60.1718, "lng": 24.9414, "radius_m": 40},
        "recipient": {"first_name": "Anneliese"},
        "window": {"from": now_ms(), "to": now_ms() + 3_600_000}
    })
}

/// A WebSocket client connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How a client presents its token.
#[derive(Debug, Clone, Copy)]
pub enum Present {
    Header,
    Subprotocol,
    None,
}

/// Opens a WebSocket to `path`, presenting `token` as asked.
///
/// # Panics
/// When the handshake fails.
pub async fn ws_connect(server: &Server, path: &str, token: &str, how: Present) -> Ws {
    let mut req = format!("ws://{}{path}", server.addr)
        .into_client_request()
        .expect("request");
    match how {
        Present::Header => {
            req.headers_mut().insert(
                "authorization",
                HeaderValue::from_str(&format!("Bearer {token}")).expect("header"),
            );
        }
        Present::Subprotocol => {
            req.headers_mut().insert(
                "sec-websocket-protocol",
                HeaderValue::from_str(&format!("rxtrack.v1, bearer.{token}")).expect("header"),
            );
        }
        Present::None => {}
    }
    let cfg = WebSocketConfig::default()
        .max_frame_size(Some(64 << 20))
        .max_message_size(Some(64 << 20));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(cfg), true)
        .await
        .expect("websocket handshake");
    ws
}

/// Sends a JSON text frame.
pub async fn send_json(ws: &mut Ws, v: &Value) {
    ws.send(Message::Text(v.to_string().into()))
        .await
        .expect("send");
}

/// What the server sent next: a JSON message, or the close code.
#[derive(Debug, PartialEq)]
pub enum Got {
    Json(Value),
    Closed(Option<u16>),
}

/// Reads the next message (skipping pings), waiting at most `secs`.
///
/// # Panics
/// When nothing arrives in time.
pub async fn next(ws: &mut Ws, secs: u64) -> Got {
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(secs), ws.next())
            .await
            .expect("a message in time");
        match msg {
            Some(Ok(Message::Text(t))) => {
                return Got::Json(serde_json::from_str(t.as_str()).expect("JSON from server"));
            }
            Some(Ok(Message::Close(frame))) => {
                return Got::Closed(frame.map(|f: CloseFrame| u16::from(f.code)));
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Got::Closed(None),
        }
    }
}

/// Reads until the socket closes, returning the close code.
pub async fn close_code(ws: &mut Ws, secs: u64) -> Option<u16> {
    loop {
        if let Got::Closed(c) = next(ws, secs).await {
            return c;
        }
    }
}

/// Reads messages until an ack arrives; returns the ack's seq and any errors seen before it.
pub async fn until_ack(ws: &mut Ws) -> (u64, Vec<Value>) {
    let mut errors = Vec::new();
    loop {
        match next(ws, 10).await {
            Got::Json(v) if v["type"] == "ack" => return (v["seq"].as_u64().unwrap_or(0), errors),
            Got::Json(v) if v["type"] == "error" => errors.push(v),
            Got::Json(_) => {}
            Got::Closed(c) => panic!("closed with {c:?} while waiting for an ack"),
        }
    }
}

/// A ping at `seq`, now, near central Helsinki.
pub fn ping(seq: u64) -> Value {
    json!({"type":"ping","seq":seq,"ts":now_ms(),"lat":60.1699 + seq as f64 * 1e-5,"lng":24.9384,"acc":6.5,"speed":8.1,"heading":270})
}

/// Polls `f` until it is true or `within` passes; whether it became true.
pub async fn eventually(within: Duration, mut f: impl AsyncFnMut() -> bool) -> bool {
    let until = std::time::Instant::now() + within;
    while std::time::Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Connects a driver and consumes the initial `config` message.
///
/// # Panics
/// When the first message is not `config`.
pub async fn driver_connect(server: &Server, token: &str) -> Ws {
    let mut ws = ws_connect(server, "/v1/driver/ws", token, Present::Subprotocol).await;
    match next(&mut ws, 10).await {
        Got::Json(v) if v["type"] == "config" => ws,
        other => panic!("expected config, got {other:?}"),
    }
}

/// A close frame code as a number (for asserting).
pub fn code(c: CloseCode) -> u16 {
    u16::from(c)
}

/// The tracking token at the end of a created delivery's `tracking_url`.
///
/// # Panics
/// When the answer has no tracking URL.
#[must_use]
pub fn tracking_token(created: &Value) -> String {
    created["tracking_url"]
        .as_str()
        .expect("a tracking_url")
        .rsplit('/')
        .next()
        .expect("a token")
        .to_owned()
}

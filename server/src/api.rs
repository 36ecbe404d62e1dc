//! The HTTP API: routes, authentication of each request, JSON bodies and errors.
//!
//! Errors are `{"error":{"code":"…","message":"…"}}` with a fitting status.
//! Every handler takes the tenant from the verified token only; a delivery
//! of another tenant is indistinguishable from one that does not exist.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::auth::Principal;
use crate::domain::{Action, CreateDelivery, DomainError, StatusChange};
use crate::error::ApiError;
use crate::log::{self, Event};
use crate::tenant::Tenant;
use crate::types::{DeliveryId, DeviceId, SubjectId};

type ApiResult<T> = Result<T, ApiError>;

/// The verified caller of a request.
fn principal(app: &App, headers: &HeaderMap) -> ApiResult<Principal> {
    let token = crate::ws::bearer(headers).ok_or_else(|| {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <token>",
        )
    })?;
    app.verifier
        .verify(&token, crate::clock::now())
        .map_err(|e| {
            app.metrics
                .auth_failures
                .with_label_values(&[e.reason()])
                .inc();
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", e.to_string())
        })
}

/// The role table's answer, before any body is read.
fn require(p: &Principal, action: Action) -> ApiResult<()> {
    action.check(p).map_err(ApiError::from)
}

fn require_fresh(p: &Principal) -> ApiResult<()> {
    if p.freshly_authenticated(crate::clock::now()) {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "reauthentication_required",
            "this action needs auth_time within the last 5 minutes",
        ))
    }
}

fn tenant<'a>(app: &'a App, p: &Principal) -> ApiResult<&'a std::sync::Arc<Tenant>> {
    app.tenant(&p.tenant)
        .ok_or_else(|| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "unknown tenant"))
}

/// Reads a JSON body of at most the configured size; unknown fields are
/// refused by the target types.
async fn json_body<T: DeserializeOwned>(app: &App, body: Body) -> ApiResult<T> {
    let limit = app.config.limits.max_body_bytes;
    let bytes: Bytes = axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request bodies are limited to {limit} bytes"),
        )
    })?;
    serde_json::from_slice(&bytes).map_err(|e| match e.classify() {
        serde_json::error::Category::Data => ApiError::bad_request("invalid_body", e.to_string()),
        _ => ApiError::bad_request("invalid_json", e.to_string()),
    })
}

fn parse_id<T>(s: &str, f: impl FnOnce(&str) -> Result<T, crate::types::IdError>) -> ApiResult<T> {
    f(s).map_err(|e| ApiError::bad_request("invalid_id", e.to_string()))
}

/// Builds the router.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/v1/deliveries", post(create_delivery))
        .route("/v1/deliveries/{id}", get(get_delivery))
        .route("/v1/deliveries/{id}/events", get(delivery_events))
        .route("/v1/deliveries/{id}/status", post(change_status))
        .route("/v1/drivers/{driver_id}/route", put(assign_route))
        .route("/v1/log/export", get(export))
        .route("/v1/log/verify", get(verify))
        .route("/v1/devices", get(list_devices))
        .route("/v1/devices/{did}/revoke", post(revoke_device))
        .route("/v1/driver/ws", get(driver_ws))
        .route("/v1/deliveries/{id}/link/revoke", post(revoke_link))
        .route("/v1/track/{token}", get(crate::track::snapshot))
        .route("/v1/track/{token}/ws", get(crate::track::socket))
        .route("/t/{token}", get(crate::web::track_page))
        .route("/v1/dispatch/ws", get(crate::dispatch::socket))
        .route("/dispatch", get(crate::web::dispatch_page))
        .route("/assets/dispatch.js", get(crate::web::dispatch_js))
        .route("/assets/dispatch.css", get(crate::web::dispatch_css))
        .route("/assets/track.js", get(crate::web::track_js))
        .route("/assets/track.css", get(crate::web::track_css))
        .route_layer(middleware::from_fn_with_state(app.clone(), observe))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(guard))
        .with_state(app)
}

/// Counts requests by route template (never the concrete path: it may hold ids).
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let started = Instant::now();
    let res = next.run(req).await;
    app.metrics
        .http_requests
        .with_label_values(&[&route, &method, res.status().as_str()])
        .inc();
    app.metrics
        .http_seconds
        .with_label_values(&[&route])
        .observe(started.elapsed().as_secs_f64());
    res
}

/// Refuses tokens in query strings and sets the safety headers on every response.
async fn guard(req: Request, next: Next) -> Response {
    let in_query = req.uri().query().is_some_and(|q| {
        q.split('&').any(|kv| {
            let k = kv.split('=').next().unwrap_or("").to_ascii_lowercase();
            matches!(
                k.as_str(),
                "token" | "access_token" | "jwt" | "bearer" | "authorization" | "id_token"
            )
        })
    });
    let mut res = if in_query {
        ApiError::bad_request(
            "token_in_query",
            "tokens are never accepted in a query string: use the Authorization header or the bearer subprotocol",
        )
        .into_response()
    } else {
        next.run(req).await
    };
    let h = res.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    res
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed here",
    )
}

async fn healthz() -> impl IntoResponse {
    axum::Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(app): State<Arc<App>>) -> Response {
    if app.shutdown.is_cancelled() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "draining",
            "the server is draining",
        )
        .into_response();
    }
    if !app.log.healthy() {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "log_unavailable",
            "the delivery log refuses writes",
        )
        .into_response();
    }
    // Without Redis a node still serves its own clients: ready, but saying so.
    if app.bus.reachable() == Some(false) {
        return axum::Json(serde_json::json!({
            "status": "degraded",
            "redis": "unreachable: positions and ETA windows reach only this node's clients",
        }))
        .into_response();
    }
    axum::Json(serde_json::json!({"status": "ready"})).into_response()
}

async fn metrics(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

#[derive(Serialize)]
struct Created {
    id: DeliveryId,
    tracking_url: String,
}

/// A tracking token: 192 bits from the system CSPRNG, base64url.
fn new_tracking_token() -> ApiResult<String> {
    use base64::Engine as _;
    let mut raw = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "random generator failed",
        )
    })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw))
}

fn base_url(app: &App, headers: &HeaderMap) -> String {
    if let Some(u) = &app.config.public_url {
        return u.clone();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| {
            h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .map_or_else(|| app.config.listen.to_string(), str::to_owned);
    format!("http://{host}")
}

async fn create_delivery(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::CreateDelivery)?;
    let req: CreateDelivery = json_body(&app, body).await?;
    let t = tenant(&app, &p)?;
    let token = new_tracking_token()?;
    let hash = crate::track::sha256_hex(&token);
    let id = t.create(&p, req, hash, crate::clock::now()).await?;
    let tracking_url = format!("{}/t/{token}", base_url(&app, &headers));
    Ok((
        StatusCode::CREATED,
        axum::Json(Created { id, tracking_url }),
    )
        .into_response())
}

async fn get_delivery(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::ReadDelivery)?;
    let id = parse_id(&id, DeliveryId::parse)?;
    let t = tenant(&app, &p)?;
    let body = t.read(|book, _| {
        book.delivery(&id)
            .map(|d| serde_json::to_value(book.view(d)).unwrap_or_default())
    });
    let body = body.ok_or_else(|| DomainError::NotFound(id.to_string()))?;
    Ok(axum::Json(body).into_response())
}

async fn delivery_events(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::ReadDeliveryEvents)?;
    let id = parse_id(&id, DeliveryId::parse)?;
    let t = tenant(&app, &p)?;
    if !t.read(|book, _| book.delivery(&id).is_some()) {
        return Err(DomainError::NotFound(id.to_string()).into());
    }
    let key = t.key.clone();
    let log = app.log.clone();
    let tenant_id = p.tenant.clone();
    let events = tokio::task::spawn_blocking(move || -> Result<Vec<Event>, String> {
        log.delivery_events(&tenant_id, &id)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|stored| log::open_with(&key, stored).map_err(|e| e.to_string()))
            .collect()
    })
    .await
    .map_err(|_| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "reader failed",
        )
    })?
    .map_err(|e| {
        tracing::error!(error = %e, "reading delivery events failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the events could not be read",
        )
    })?;
    Ok(axum::Json(serde_json::json!({ "events": events })).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusBody {
    status: StatusChange,
    #[serde(default)]
    reason: Option<String>,
}

async fn change_status(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::ChangeStatus(None))?;
    let id = parse_id(&id, DeliveryId::parse)?;
    let b: StatusBody = json_body(&app, body).await?;
    let t = tenant(&app, &p)?;
    let status = t
        .change_status(&p, &id, b.status, b.reason, crate::clock::now())
        .await?;
    Ok(axum::Json(serde_json::json!({"id": id, "status": status})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteBody {
    stops: Vec<DeliveryId>,
}

async fn assign_route(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(driver): Path<String>,
    body: Body,
) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::AssignRoute)?;
    let driver = parse_id(&driver, SubjectId::parse)?;
    let b: RouteBody = json_body(&app, body).await?;
    let t = tenant(&app, &p)?;
    let stops = t
        .assign_route(&p, &driver, &b.stops, crate::clock::now())
        .await?;
    Ok(axum::Json(serde_json::json!({"driver_id": driver, "stops": stops})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportQuery {
    from: Option<i64>,
    to: Option<i64>,
}

/// Bytes of NDJSON gathered before a chunk is sent.
const EXPORT_CHUNK: usize = 64 * 1024;
/// Chunks buffered between the reading thread and the socket.
const EXPORT_CHANNEL: usize = 4;

async fn export(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    query: Result<Query<ExportQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::ExportLog)?;
    require_fresh(&p)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let from = q.from.unwrap_or(0);
    let to = q.to.unwrap_or(i64::MAX);
    if to < from {
        return Err(ApiError::bad_request(
            "invalid_query",
            "to must not be before from",
        ));
    }
    let t = tenant(&app, &p)?;
    // The export is itself recorded, durably, before any data leaves.
    t.log_exported(&p, from, to, crate::clock::now()).await?;

    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(EXPORT_CHANNEL);
    let key = t.key.clone();
    let tenant_id = p.tenant.clone();
    let log = app.log.clone();
    app.tracker.spawn_blocking(move || {
        let mut buf = Vec::with_capacity(EXPORT_CHUNK);
        let mut failed = false;
        let res = log.scan(&tenant_id, from, to, &mut |stored| {
            let written = log::open_with(&key, stored)
                .ok()
                .and_then(|ev| serde_json::to_writer(&mut buf, &ev).ok());
            if written.is_none() {
                failed = true;
                return false;
            }
            buf.push(b'\n');
            if buf.len() >= EXPORT_CHUNK {
                let chunk = Bytes::from(std::mem::replace(
                    &mut buf,
                    Vec::with_capacity(EXPORT_CHUNK),
                ));
                return tx.blocking_send(Ok(chunk)).is_ok();
            }
            true
        });
        if res.is_err() || failed {
            let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
        } else if !buf.is_empty() {
            let _ = tx.blocking_send(Ok(Bytes::from(buf)));
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response())
}

async fn verify(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::VerifyLog)?;
    let log = app.log.clone();
    let tenant_id = p.tenant.clone();
    let report = tokio::task::spawn_blocking(move || log.verify(&tenant_id))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "verifier failed",
            )
        })?
        .map_err(|e| {
            tracing::error!(error = %e, "verifying the log failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the log could not be read",
            )
        })?;
    Ok(axum::Json(report).into_response())
}

async fn list_devices(State(app): State<Arc<App>>, headers: HeaderMap) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::ListDevices)?;
    let t = tenant(&app, &p)?;
    let remote = app.bus.devices(&p.tenant).await;
    let mut rows = app
        .devices
        .list(&p.tenant, app.bus.as_ref(), remote, crate::clock::now());
    let revoked = t.read(|book, _| book.revoked().clone());
    for r in &mut rows {
        r.revoked = revoked.contains(&r.device_id);
    }
    for d in revoked {
        if !rows.iter().any(|r| r.device_id == d) {
            rows.push(crate::devices::DeviceRow {
                device_id: d,
                driver_id: None,
                connected: false,
                last_seen: None,
                last_seq: 0,
                revoked: true,
            });
        }
    }
    rows.sort_by(|a, b| a.device_id.cmp(&b.device_id));
    Ok(axum::Json(serde_json::json!({ "devices": rows })).into_response())
}

async fn revoke_device(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(did): Path<String>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::RevokeDevice)?;
    require_fresh(&p)?;
    let did = parse_id(&did, DeviceId::parse)?;
    let t = tenant(&app, &p)?;
    // Its live session is kicked by the commit path once the revoke is
    // durable; a repeated revoke kicks again (a session that slipped in).
    t.revoke_device(&p, &did, crate::clock::now()).await?;
    app.bus
        .kick_device(&p.tenant, &did, crate::bus::Kick::Revoked);
    Ok(axum::Json(serde_json::json!({"device_id": did, "revoked": true})).into_response())
}

async fn revoke_link(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    let p = principal(&app, &headers)?;
    require(&p, Action::RevokeLink)?;
    let id = parse_id(&id, DeliveryId::parse)?;
    let t = tenant(&app, &p)?;
    t.revoke_link(&p, &id, crate::clock::now()).await?;
    Ok(axum::Json(serde_json::json!({"id": id, "link_revoked": true})).into_response())
}

async fn driver_ws(State(app): State<Arc<App>>, mut req: Request) -> ApiResult<Response> {
    let up = crate::socket::Upgrade::new(
        &app,
        &mut req,
        app.config.limits.max_message_bytes,
        crate::ws::SMALL_WRITES,
    )?;
    let auth = app.verify_presented(up.token());
    let app2 = app.clone();
    Ok(up.serve(&app, "driver", move |mut ws| async move {
        let end = crate::ingest::run(&app2, &mut ws, auth).await;
        (ws, end)
    }))
}

//! The one HTTP server of the process (`--http-endpoint`): metrics, liveness and readiness.
//!
//! - `GET <metrics-path>` (default `/metrics`): every metric, Prometheus text format.
//! - `GET /healthz`: 200 while every liveness check passes (the process is serving; the leader
//!   elector is healthy).
//! - `GET /healthz/leader-election`: the leader elector's check alone, as the Go sidecars serve it.
//! - `GET /readyz`: 200 when every readiness check passes: the CSI driver answers and the caches
//!   have synced. Leader and standby are both ready: a standby is a healthy, warm replica.
//!
//! Bodies list each check as `[+]name ok` or `[-]name failed: reason`, as kube-apiserver does.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

type CheckFn = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Named health checks, added as the parts of the process come up. Cheap to clone.
#[derive(Clone, Default)]
pub struct Health {
    live: Arc<RwLock<Vec<(String, CheckFn)>>>,
    ready: Arc<RwLock<Vec<(String, CheckFn)>>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Health").finish_non_exhaustive()
    }
}

impl Health {
    /// Adds a liveness check (served on `/healthz`, and on `/healthz/<name>` alone).
    pub fn add_live(
        &self,
        name: &str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        let mut checks = self.live.write().unwrap_or_else(|e| e.into_inner());
        checks.push((name.to_string(), Arc::new(check)));
    }

    /// Adds a readiness check (served on `/readyz`).
    pub fn add_ready(
        &self,
        name: &str,
        check: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        let mut checks = self.ready.write().unwrap_or_else(|e| e.into_inner());
        checks.push((name.to_string(), Arc::new(check)));
    }

    /// Runs the readiness checks; `Ok` when all pass, else the report.
    pub fn readiness(&self) -> Result<String, String> {
        run_checks(&self.ready, None)
    }

    /// Runs the liveness checks (`only`: just the check of that name).
    pub fn liveness(&self, only: Option<&str>) -> Result<String, String> {
        run_checks(&self.live, only)
    }
}

fn run_checks(
    checks: &RwLock<Vec<(String, CheckFn)>>,
    only: Option<&str>,
) -> Result<String, String> {
    let checks = checks.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut report = String::new();
    let mut ok = true;
    let mut found = only.is_none();
    for (name, check) in checks.iter().filter(|(n, _)| only.is_none_or(|o| o == n)) {
        found = true;
        match check() {
            Ok(()) => report.push_str(&format!("[+]{name} ok\n")),
            Err(reason) => {
                ok = false;
                report.push_str(&format!("[-]{name} failed: {reason}\n"));
            }
        }
    }
    if !found {
        return Err(format!("no check named {}\n", only.unwrap_or_default()));
    }
    if ok {
        report.push_str("ok\n");
        Ok(report)
    } else {
        Err(report)
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Metrics,
    health: Health,
}

fn reply(result: Result<String, String>) -> Response {
    match result {
        Ok(body) => (StatusCode::OK, body).into_response(),
        Err(body) => (StatusCode::INTERNAL_SERVER_ERROR, body).into_response(),
    }
}

/// Turns `:8080` (all interfaces, as Go reads it) or `host:port` into listen addresses to try.
pub fn listen_addresses(endpoint: &str) -> Result<Vec<SocketAddr>, String> {
    let bad = || format!("invalid --http-endpoint {endpoint:?}: expected [host]:port");
    if let Some(port) = endpoint.strip_prefix(':') {
        let port: u16 = port.parse().map_err(|_| bad())?;
        // Dual-stack where the host has IPv6, IPv4 otherwise.
        return Ok(vec![
            SocketAddr::from(([0u16; 8], port)),
            SocketAddr::from(([0u8; 4], port)),
        ]);
    }
    use std::net::ToSocketAddrs;
    let addrs: Vec<SocketAddr> = endpoint.to_socket_addrs().map_err(|_| bad())?.collect();
    if addrs.is_empty() {
        return Err(bad());
    }
    Ok(addrs)
}

/// Binds the server's listener (so a taken port fails at start-up, loudly).
pub async fn bind(endpoint: &str) -> std::io::Result<TcpListener> {
    let addrs = listen_addresses(endpoint)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut last = None;
    for addr in addrs {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| std::io::Error::other("no address to listen on")))
}

/// Serves until `token` is cancelled.
pub async fn serve(
    listener: TcpListener,
    metrics_path: &str,
    metrics: Metrics,
    health: Health,
    token: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            metrics_path,
            get(|State(s): State<AppState>| async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    s.metrics.encode(),
                )
            }),
        )
        .route(
            "/healthz",
            get(|State(s): State<AppState>| async move { reply(s.health.liveness(None)) }),
        )
        .route(
            "/healthz/{check}",
            get(
                |State(s): State<AppState>,
                 axum::extract::Path(check): axum::extract::Path<String>| async move {
                    reply(s.health.liveness(Some(&check)))
                },
            ),
        )
        .route(
            "/readyz",
            get(|State(s): State<AppState>| async move { reply(s.health.readiness()) }),
        )
        // What each controller waits on: the keys that keep failing, with their last error and
        // next retry, and the passes that run long (docs/troubleshooting.md).
        .route(
            "/debug/queues",
            get(|State(s): State<AppState>| async move { axum::Json(s.metrics.queues().stuck()) }),
        )
        // Views controllers registered, such as the provisioner's intents in flight
        // (`/debug/intents`).
        .route(
            "/debug/{view}",
            get(
                |State(s): State<AppState>,
                 axum::extract::Path(view): axum::extract::Path<String>| async move {
                    let views = s.metrics.views();
                    match views.render(&view) {
                        Some(v) => Ok(axum::Json(v)),
                        None => Err((
                            axum::http::StatusCode::NOT_FOUND,
                            format!(
                                "no view {view:?}; known: queues {}\n",
                                views.names().join(" ")
                            ),
                        )),
                    }
                },
            ),
        )
        .with_state(AppState { metrics, health });
    tracing::info!(address = %listener.local_addr()?, "serving metrics and health");
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { token.cancelled().await })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_report_like_kube_apiserver() {
        let health = Health::default();
        health.add_ready("csi-driver", || Ok(()));
        assert_eq!(health.readiness().unwrap(), "[+]csi-driver ok\nok\n");
        health.add_ready("informers", || Err("PersistentVolume not synced".into()));
        let report = health.readiness().unwrap_err();
        assert!(report.contains("[-]informers failed: PersistentVolume not synced"));
        health.add_live("leader-election", || Ok(()));
        assert!(health.liveness(Some("leader-election")).is_ok());
        assert!(health.liveness(Some("nope")).is_err());
    }

    #[test]
    fn endpoints_parse_like_go() {
        assert_eq!(listen_addresses(":8080").unwrap().len(), 2);
        assert_eq!(
            listen_addresses("127.0.0.1:9").unwrap(),
            vec!["127.0.0.1:9".parse().unwrap()]
        );
        assert!(listen_addresses(":http").is_err());
        assert!(listen_addresses("nonsense").is_err());
    }
}

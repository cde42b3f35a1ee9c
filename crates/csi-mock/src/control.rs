//! The HTTP control API of a running mock (the binary's `--control-endpoint`), JSON over HTTP/1.1:
//!
//! | request | effect | answer |
//! |---|---|---|
//! | `GET /state` | | the [`MockState`] |
//! | `GET /calls` | | `{"CreateVolume": 3, ...}` (methods called so far) |
//! | `DELETE /calls` | resets the counts | `{}` |
//! | `GET /faults` | | the queued faults as [`FaultSpec`]s, in precedence order |
//! | `POST /faults` | queues the [`FaultSpec`] in the body | 201 and the queued faults; 400 with `{"error": ...}` if invalid |
//! | `DELETE /faults` | clears every fault | the (empty) queued faults |
//! | `PUT /ready` | `{"ready": false}` sets what Probe reports | `{"ready": false}` |
//!
//! It is a test tool: no authentication, so bind it to loopback.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::driver::MockDriver;
use crate::error::MockError;
use crate::fault::FaultSpec;
use crate::method::Method;
use crate::state::MockState;

/// Body of `PUT /ready` and its answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    /// What Probe reports.
    pub ready: bool,
}

/// The control API's routes over `driver`.
pub fn router(driver: MockDriver) -> Router {
    Router::new()
        .route("/state", get(get_state))
        .route("/calls", get(get_calls).delete(reset_calls))
        .route(
            "/faults",
            get(get_faults).post(post_fault).delete(clear_faults),
        )
        .route("/ready", put(put_ready))
        .with_state(driver)
}

async fn get_state(State(driver): State<MockDriver>) -> Json<MockState> {
    Json(driver.state())
}

async fn get_calls(State(driver): State<MockDriver>) -> Json<BTreeMap<Method, u64>> {
    Json(driver.all_calls())
}

async fn reset_calls(State(driver): State<MockDriver>) -> Json<BTreeMap<Method, u64>> {
    driver.reset_calls();
    Json(driver.all_calls())
}

fn fault_list(driver: &MockDriver) -> Vec<FaultSpec> {
    driver.faults().iter().map(FaultSpec::from_rule).collect()
}

async fn get_faults(State(driver): State<MockDriver>) -> Json<Vec<FaultSpec>> {
    Json(fault_list(&driver))
}

async fn post_fault(State(driver): State<MockDriver>, Json(spec): Json<FaultSpec>) -> Response {
    match driver.inject_spec(&spec) {
        Ok(()) => (StatusCode::CREATED, Json(fault_list(&driver))).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

async fn clear_faults(State(driver): State<MockDriver>) -> Json<Vec<FaultSpec>> {
    driver.clear_faults();
    Json(fault_list(&driver))
}

async fn put_ready(
    State(driver): State<MockDriver>,
    Json(readiness): Json<Readiness>,
) -> Json<Readiness> {
    driver.set_ready(readiness.ready);
    tracing::info!(ready = readiness.ready, "readiness set");
    Json(Readiness {
        ready: driver.is_ready(),
    })
}

/// A running control API server.
#[derive(Debug)]
pub struct ControlServer {
    local_addr: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl ControlServer {
    /// Binds `addr` (`host:port`; port 0 picks a free one) and serves [`router`] in a task.
    pub async fn start(addr: &str, driver: MockDriver) -> Result<ControlServer, MockError> {
        let bind_error = |source| MockError::Bind {
            endpoint: addr.to_owned(),
            source,
        };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            axum::serve(listener, router(driver))
                .with_graceful_shutdown(signal)
                .await
        });
        tracing::info!(addr = %local_addr, "control API serving");
        Ok(ControlServer {
            local_addr,
            shutdown,
            task: Some(task),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server, waiting up to [`SHUTDOWN_GRACE`](crate::server::SHUTDOWN_GRACE).
    pub async fn shutdown(mut self) -> Result<(), MockError> {
        self.shutdown.cancel();
        let Some(mut task) = self.task.take() else {
            return Ok(());
        };
        match tokio::time::timeout(crate::server::SHUTDOWN_GRACE, &mut task).await {
            Ok(Ok(served)) => served.map_err(MockError::Control),
            Ok(Err(join)) => Err(MockError::Join(join)),
            Err(_) => {
                task.abort();
                Ok(())
            }
        }
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

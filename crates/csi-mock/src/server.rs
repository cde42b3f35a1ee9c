//! [`MockServer`]: serves a [`MockDriver`] over gRPC on a Unix socket or TCP, in a spawned task.
//!
//! Invariants: a stale socket file is removed before binding; [`MockServer::shutdown`] stops
//! accepting, ends delayed and hanging calls, waits (bounded by [`SHUTDOWN_GRACE`]) for calls in
//! flight, and removes the socket file. Dropping a server without `shutdown` stops it too, but
//! without waiting.

use std::net::SocketAddr;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use csi::v1::controller_server::ControllerServer;
use csi::v1::group_controller_server::GroupControllerServer;
use csi::v1::identity_server::IdentityServer;
use csi::v1::node_server::NodeServer;
use tokio::net::{TcpListener, UnixListener};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;

use crate::driver::MockDriver;
use crate::error::MockError;
use crate::service::CsiService;

/// How long [`MockServer::shutdown`] waits for calls in flight before aborting them.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Where a server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddress {
    /// A Unix domain socket path.
    Unix(PathBuf),
    /// A TCP `host:port` (port 0 picks a free port).
    Tcp(String),
}

impl ListenAddress {
    /// Parses `unix:///path`, a bare path, or `tcp://host:port`.
    pub fn parse(endpoint: &str) -> Result<Self, MockError> {
        let invalid = |reason: &str| MockError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = endpoint.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(invalid("the socket path is empty"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = endpoint.strip_prefix("tcp://") {
            let valid = hostport
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(invalid("expected tcp://host:port"));
            }
            return Ok(Self::Tcp(hostport.to_owned()));
        }
        if endpoint.contains("://") {
            return Err(invalid("only unix:// and tcp:// endpoints are supported"));
        }
        if endpoint.is_empty() {
            return Err(invalid("the endpoint is empty"));
        }
        Ok(Self::Unix(PathBuf::from(endpoint)))
    }
}

/// Removes a leftover socket file (from a crashed run). Anything else at the path is an error,
/// so a typo cannot delete a regular file.
fn remove_stale_socket(path: &Path, endpoint: &str) -> Result<(), MockError> {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            tracing::info!(path = %path.display(), "removing stale socket");
            std::fs::remove_file(path).map_err(|source| MockError::Bind {
                endpoint: endpoint.to_owned(),
                source,
            })
        }
        Ok(_) => Err(MockError::InvalidEndpoint {
            endpoint: endpoint.to_owned(),
            reason: "the path exists and is not a socket".to_owned(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(MockError::Bind {
            endpoint: endpoint.to_owned(),
            source,
        }),
    }
}

/// A running gRPC server for a [`MockDriver`].
#[derive(Debug)]
pub struct MockServer {
    endpoint: String,
    socket: Option<PathBuf>,
    local_addr: Option<SocketAddr>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), tonic::transport::Error>>>,
}

impl MockServer {
    /// Binds `endpoint` (`unix:///path`, a bare path, or `tcp://host:port`) and serves the
    /// Identity, Controller, GroupController and Node services of `driver` in a spawned task.
    ///
    /// Must be called within a Tokio runtime. The socket's directory is created if missing.
    pub async fn start(endpoint: &str, driver: MockDriver) -> Result<MockServer, MockError> {
        let shutdown = CancellationToken::new();
        let service = CsiService::new(driver, shutdown.clone());
        let router = Server::builder()
            .add_service(IdentityServer::new(service.clone()))
            .add_service(ControllerServer::new(service.clone()))
            .add_service(GroupControllerServer::new(service.clone()))
            .add_service(NodeServer::new(service));
        let bind_error = |source| MockError::Bind {
            endpoint: endpoint.to_owned(),
            source,
        };
        let signal = shutdown.clone().cancelled_owned();
        let (endpoint_url, socket, local_addr, task) = match ListenAddress::parse(endpoint)? {
            ListenAddress::Unix(path) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(bind_error)?;
                }
                remove_stale_socket(&path, endpoint)?;
                let listener = UnixListener::bind(&path).map_err(bind_error)?;
                let incoming = UnixListenerStream::new(listener);
                let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal));
                (format!("unix://{}", path.display()), Some(path), None, task)
            }
            ListenAddress::Tcp(hostport) => {
                let listener = TcpListener::bind(&hostport).await.map_err(bind_error)?;
                let addr = listener.local_addr().map_err(bind_error)?;
                let incoming = TcpListenerStream::new(listener);
                let task = tokio::spawn(router.serve_with_incoming_shutdown(incoming, signal));
                (format!("tcp://{addr}"), None, Some(addr), task)
            }
        };
        tracing::info!(endpoint = %endpoint_url, "CSI mock serving");
        Ok(MockServer {
            endpoint: endpoint_url,
            socket,
            local_addr,
            shutdown,
            task: Some(task),
        })
    }

    /// The endpoint served: `unix://<path>` or `tcp://<ip>:<port>` with the port actually bound.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The socket path, for a Unix endpoint.
    pub fn socket_path(&self) -> Option<&Path> {
        self.socket.as_deref()
    }

    /// The bound address, for a TCP endpoint.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Stops the server gracefully and removes the socket file.
    pub async fn shutdown(mut self) -> Result<(), MockError> {
        self.shutdown.cancel();
        let result = match self.task.take() {
            Some(mut task) => match tokio::time::timeout(SHUTDOWN_GRACE, &mut task).await {
                Ok(Ok(served)) => served.map_err(MockError::Serve),
                Ok(Err(join)) => Err(MockError::Join(join)),
                Err(_) => {
                    tracing::warn!(grace = ?SHUTDOWN_GRACE, "calls still in flight; aborting");
                    task.abort();
                    Ok(())
                }
            },
            None => Ok(()),
        };
        self.remove_socket();
        tracing::info!(endpoint = %self.endpoint, "CSI mock stopped");
        result
    }

    fn remove_socket(&mut self) {
        if let Some(path) = self.socket.take()
            && let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove the socket");
        }
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
        self.remove_socket();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        let cases = [
            (
                "unix:///csi/csi.sock",
                Some(ListenAddress::Unix("/csi/csi.sock".into())),
            ),
            (
                "/csi/csi.sock",
                Some(ListenAddress::Unix("/csi/csi.sock".into())),
            ),
            (
                "tcp://127.0.0.1:0",
                Some(ListenAddress::Tcp("127.0.0.1:0".into())),
            ),
            (
                "tcp://[::1]:10000",
                Some(ListenAddress::Tcp("[::1]:10000".into())),
            ),
            ("tcp://host", None),
            ("tcp://:80", None),
            ("unix://", None),
            ("http://x", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(ListenAddress::parse(input).ok(), want, "{input}");
        }
    }

    #[test]
    fn refuses_to_remove_a_regular_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "x").unwrap();
        let err = remove_stale_socket(&file, "e").unwrap_err();
        assert!(matches!(err, MockError::InvalidEndpoint { .. }));
        assert!(file.exists());
        remove_stale_socket(&dir.path().join("absent"), "e").unwrap();
    }
}

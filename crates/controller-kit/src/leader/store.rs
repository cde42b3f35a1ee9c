//! Where the Lease lives: a three-call interface (get / create / replace) and its implementation on
//! the Kubernetes API.
//!
//! # Invariants
//! - A store is bound to one Lease (namespace and name) for its whole life.
//! - [`LeaseStore::replace`] is conditioned on the `resourceVersion` carried by the object: it
//!   fails with [`LeaderError::Conflict`] when anyone else wrote the Lease since it was read, so a
//!   write never silently overwrites another candidate's claim.
//! - [`LeaseStore::create`] fails with [`LeaderError::Conflict`] when the Lease already exists.
//! - [`LeaseStore::follow`] is an accelerator only: the elector decides on reads and conditioned
//!   writes, so a watch that lags, drops or never starts costs speed, never safety.

use std::fmt;

use futures::StreamExt;
use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;

use super::LeaderError;

/// Reads and writes the one Lease an elector competes for.
///
/// The elector bounds every call with a timeout, so an implementation need not.
pub trait LeaseStore: fmt::Debug + Send + Sync {
    /// Reads the Lease; `Ok(None)` when it does not exist.
    fn get(&self) -> BoxFuture<'_, Result<Option<Lease>, LeaderError>>;

    /// Creates the Lease. Fails with [`LeaderError::Conflict`] if it already exists (someone else
    /// created it first).
    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, LeaderError>>;

    /// Replaces the Lease (PUT) on the condition that its `metadata.resourceVersion` is still the
    /// one in `lease`. Fails with [`LeaderError::Conflict`] otherwise, or if the Lease is gone.
    fn replace<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, LeaderError>>;

    /// Follows the Lease as it changes, if the store can: the channel holds its latest state
    /// (`None`: absent), and signals a change each time it does. The initial value means nothing.
    /// Called once per elector, within the runtime; following stops when the receiver is dropped.
    /// The default follows nothing (the elector then only polls).
    fn follow(&self) -> Option<watch::Receiver<Option<Lease>>> {
        None
    }
}

/// A [`LeaseStore`] on `coordination.k8s.io/v1` Leases.
#[derive(Clone)]
pub struct KubeLeaseStore {
    api: Api<Lease>,
    name: String,
}

impl KubeLeaseStore {
    /// A store for Lease `name` in `namespace`.
    ///
    /// `client` should be dedicated to leader election (see [`super::LeaderElector::new`]).
    pub fn new(client: kube::Client, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.to_owned(),
        }
    }
}

impl fmt::Debug for KubeLeaseStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KubeLeaseStore")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl LeaseStore for KubeLeaseStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<Lease>, LeaderError>> {
        Box::pin(async move {
            self.api
                .get_opt(&self.name)
                .await
                .map_err(|e| classify(e, &self.name))
        })
    }

    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, LeaderError>> {
        Box::pin(async move {
            self.api
                .create(&PostParams::default(), lease)
                .await
                .map_err(|e| classify(e, &self.name))
        })
    }

    fn replace<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, LeaderError>> {
        Box::pin(async move {
            // PUT carries `metadata.resourceVersion`, which makes the apiserver reject it with 409
            // if the Lease changed since we read it.
            self.api
                .replace(&self.name, &PostParams::default(), lease)
                .await
                .map_err(|e| classify(e, &self.name))
        })
    }

    fn follow(&self) -> Option<watch::Receiver<Option<Lease>>> {
        let (tx, rx) = watch::channel(None);
        self.spawn_follower(tx);
        Some(rx)
    }
}

impl KubeLeaseStore {
    /// Watches the one Lease (a field selector on its name) and publishes each state; the watch
    /// re-lists and retries with backoff on its own. Errors are logged once at `warn` (RBAC
    /// missing `list`/`watch` on leases, say), then at `debug`: polling goes on regardless.
    fn spawn_follower(&self, tx: watch::Sender<Option<Lease>>) {
        let config = watcher::Config::default().fields(&format!("metadata.name={}", self.name));
        let stream = watcher(self.api.clone(), config).default_backoff();
        let name = self.name.clone();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut seen_in_list = false;
            let mut warned = false;
            loop {
                let event = tokio::select! {
                    () = tx.closed() => return,
                    event = stream.next() => event,
                };
                match event {
                    None => return,
                    Some(Ok(watcher::Event::Apply(lease) | watcher::Event::InitApply(lease))) => {
                        seen_in_list = true;
                        tx.send_replace(Some(lease));
                    }
                    Some(Ok(watcher::Event::Delete(_))) => {
                        tx.send_replace(None);
                    }
                    Some(Ok(watcher::Event::Init)) => seen_in_list = false,
                    Some(Ok(watcher::Event::InitDone)) => {
                        if !seen_in_list {
                            tx.send_replace(None);
                        }
                    }
                    Some(Err(error)) if !warned => {
                        warned = true;
                        tracing::warn!(lease = %name, %error, "cannot watch the lease; polling it only");
                    }
                    Some(Err(error)) => {
                        tracing::debug!(lease = %name, %error, "lease watch failed")
                    }
                }
            }
        });
    }
}

/// 409 (Conflict or AlreadyExists) and 404 on a write mean "someone else changed the Lease": the
/// caller re-reads and decides again. Everything else is an API failure.
fn classify(e: kube::Error, lease: &str) -> LeaderError {
    match &e {
        kube::Error::Api(status)
            if status.is_conflict() || status.is_already_exists() || status.is_not_found() =>
        {
            LeaderError::Conflict {
                lease: lease.to_owned(),
            }
        }
        _ => LeaderError::Api {
            lease: lease.to_owned(),
            source: Box::new(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    #[test]
    fn classify_maps_409_and_404_to_conflict() {
        for status in [
            Status::failure("conflict", "Conflict").with_code(409),
            Status::failure("exists", "AlreadyExists").with_code(409),
            Status::failure("gone", "NotFound").with_code(404),
        ] {
            let e = classify(kube::Error::Api(status.boxed()), "l");
            assert!(matches!(e, LeaderError::Conflict { .. }), "{e}");
        }
        let e = classify(
            kube::Error::Api(
                Status::failure("denied", "Forbidden")
                    .with_code(403)
                    .boxed(),
            ),
            "l",
        );
        assert!(matches!(e, LeaderError::Api { .. }), "{e}");
    }
}

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
    use std::time::Duration;

    use kube::Resource;
    use kube::core::Status;
    use prometheus_client::registry::Registry;
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::leader::decide::LeaseRecord;
    use crate::leader::tests::{LEASE, NS, config, secs};
    use crate::leader::{LeaderElectionConfig, LeaderElector};
    use crate::testing::FakeApiServer;

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

    #[tokio::test]
    async fn kube_store_speaks_the_lease_api() {
        let server = FakeApiServer::start().await;
        let store = KubeLeaseStore::new(server.client(), NS, LEASE);
        assert!(store.get().await.unwrap().is_none(), "404 reads as absent");

        let at = jiff::Timestamp::from_microsecond(1_700_000_000_123_456).unwrap();
        let record = LeaseRecord {
            holder: "a".into(),
            lease_duration_seconds: 15,
            acquire_time: Some(at),
            renew_time: Some(at),
            transitions: 0,
        };
        let lease = Lease {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(LEASE.into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            spec: Some(record.to_spec()),
        };
        let created = store.create(&lease).await.unwrap();
        assert_eq!(created.metadata.resource_version.as_deref(), Some("1"));
        assert_eq!(
            LeaseRecord::from_lease(&created),
            record,
            "MicroTime round-trips"
        );
        assert!(matches!(
            store.create(&lease).await,
            Err(LeaderError::Conflict { .. })
        ));

        let replaced = store.replace(&created).await.unwrap();
        assert_eq!(replaced.metadata.resource_version.as_deref(), Some("2"));
        assert!(
            matches!(
                store.replace(&created).await,
                Err(LeaderError::Conflict { .. })
            ),
            "a stale resourceVersion is a conflict"
        );
        let puts = server.requests_matching("PUT", &format!("/leases/{LEASE}"));
        assert_eq!(
            puts.iter().map(|r| r.status).collect::<Vec<_>>(),
            [200, 409]
        );
        let body = puts[0].body.as_ref().unwrap();
        assert_eq!(
            body["metadata"]["resourceVersion"], "1",
            "PUT carries the version read"
        );
        assert_eq!(
            body["spec"]["renewTime"], "2023-11-14T22:13:20.123456Z",
            "MicroTime on the wire"
        );
    }

    #[tokio::test]
    async fn elector_on_the_kube_store_leads_and_releases() {
        let server = FakeApiServer::start().await;
        let mut registry = Registry::default();
        let config = LeaderElectionConfig {
            lease_duration: secs(3),
            renew_deadline: secs(2),
            retry_period: Duration::from_millis(200),
            ..config("pod-0")
        };
        let elector = LeaderElector::new(server.client(), config, &mut registry).unwrap();
        let shutdown = CancellationToken::new();
        let (mut rx, task) = elector.spawn(shutdown.clone());
        tokio::time::timeout(secs(5), rx.wait_for(|l| *l))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await; // a couple of renewals
        shutdown.cancel();
        task.await.unwrap();
        let path = format!("{}/{LEASE}", Lease::url_path(&(), Some(NS)));
        let lease = server.get_json(&path).unwrap();
        assert_eq!(lease["spec"]["holderIdentity"], "");
        assert_eq!(lease["spec"]["leaseDurationSeconds"], 1);
        assert_eq!(lease["metadata"]["name"], LEASE);
        let version: u64 = lease["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(version >= 3, "created, renewed, released: {version}");
    }
}

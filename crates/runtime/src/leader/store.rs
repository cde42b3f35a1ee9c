//! Where the Lease lives: a three-call interface (get / create / replace) and its implementation on
//! the Kubernetes API.
//!
//! # Invariants
//! - A store is bound to one Lease (namespace and name) for its whole life.
//! - [`LeaseStore::replace`] is conditioned on the `resourceVersion` carried by the object: it
//!   fails with [`LeaderError::Conflict`] when anyone else wrote the Lease since it was read, so a
//!   write never silently overwrites another candidate's claim.
//! - [`LeaseStore::create`] fails with [`LeaderError::Conflict`] when the Lease already exists.

use std::fmt;

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, PostParams};

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

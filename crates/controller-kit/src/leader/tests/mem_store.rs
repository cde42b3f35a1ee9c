//! The in-memory [`LeaseStore`] of the election tests: one shared "apiserver" ([`Backend`]) that
//! keeps `resourceVersion`, and per-candidate connections to it ([`MemStore`]) that can be made to
//! fail, hang, lag or race.

use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::coordination::v1::Lease;
use tokio::sync::watch;
use tokio::time::{Instant, sleep};

use super::{LEASE, NS};
use crate::leader::decide::LeaseRecord;
use crate::leader::{LeaderError, LeaseStore};

/// One write that reached the "server".
#[derive(Clone, Debug)]
pub(crate) struct Write {
    pub(crate) by: String,
    pub(crate) at: Instant,
    pub(crate) record: LeaseRecord,
}

/// The "apiserver": one Lease and its resourceVersion, and a watch of it.
#[derive(Debug)]
pub(crate) struct Backend {
    pub(crate) lease: Option<Lease>,
    version: u64,
    pub(crate) writes: Vec<Write>,
    watch: watch::Sender<Option<Lease>>,
}

impl Default for Backend {
    fn default() -> Self {
        Self {
            lease: None,
            version: 0,
            writes: Vec::new(),
            watch: watch::Sender::new(None),
        }
    }
}

impl Backend {
    fn store(&mut self, by: &str, mut lease: Lease) -> Lease {
        self.version += 1;
        lease.metadata.resource_version = Some(self.version.to_string());
        self.writes.push(Write {
            by: by.to_owned(),
            at: Instant::now(),
            record: LeaseRecord::from_lease(&lease),
        });
        self.lease = Some(lease.clone());
        self.watch.send_replace(Some(lease.clone()));
        lease
    }

    /// Someone outside the test's electors writes `record` unconditionally.
    pub(crate) fn put(&mut self, by: &str, record: &LeaseRecord) {
        let mut lease = self.lease.clone().unwrap_or_else(|| Lease {
            metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                name: Some(LEASE.into()),
                namespace: Some(NS.into()),
                ..Default::default()
            },
            spec: None,
        });
        lease.spec = Some(record.to_spec());
        self.store(by, lease);
    }

    pub(crate) fn record(&self) -> Option<LeaseRecord> {
        self.lease.as_ref().map(LeaseRecord::from_lease)
    }

    pub(crate) fn writes_by(&self, by: &str) -> Vec<Write> {
        self.writes.iter().filter(|w| w.by == by).cloned().collect()
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Reach {
    #[default]
    Up,
    /// Every call fails at once (connection refused).
    Down,
    /// Every call hangs forever (black-holed network).
    Hang,
}

/// Faults injected into one candidate's view of the backend.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub(crate) reach: Reach,
    /// Fail this many next calls, then recover.
    pub(crate) fail_calls: usize,
    /// Just before our next replace reaches the backend, another writer writes this record
    /// (bumping the resourceVersion), so that replace loses the race with 409.
    pub(crate) intrude: Option<(String, LeaseRecord)>,
    /// Delay before each call reaches the backend, to interleave candidates.
    pub(crate) latency: Duration,
}

/// One candidate's connection to the shared backend.
#[derive(Clone, Debug)]
pub(crate) struct MemStore {
    pub(crate) who: String,
    backend: Arc<Mutex<Backend>>,
    pub(crate) faults: Arc<Mutex<Faults>>,
    /// Whether [`LeaseStore::follow`] watches the backend (else the elector only polls).
    follows: bool,
}

impl MemStore {
    pub(crate) fn new(backend: &Arc<Mutex<Backend>>, who: &str) -> Self {
        Self {
            who: who.to_owned(),
            backend: backend.clone(),
            faults: Arc::default(),
            follows: true,
        }
    }

    /// A store without a watch: the elector polls only.
    pub(crate) fn polling_only(mut self) -> Self {
        self.follows = false;
        self
    }

    pub(crate) fn set_reach(&self, reach: Reach) {
        self.faults.lock().unwrap().reach = reach;
    }

    async fn enter(&self) -> Result<(), LeaderError> {
        let (latency, reach) = {
            let f = self.faults.lock().unwrap();
            (f.latency, f.reach)
        };
        if !latency.is_zero() {
            sleep(latency).await;
        }
        let fail = {
            let mut f = self.faults.lock().unwrap();
            let fail = f.fail_calls > 0;
            f.fail_calls = f.fail_calls.saturating_sub(1);
            fail
        };
        match reach {
            Reach::Hang => std::future::pending().await,
            Reach::Down => Err(unreachable()),
            Reach::Up if fail => Err(unreachable()),
            Reach::Up => Ok(()),
        }
    }
}

fn unreachable() -> LeaderError {
    LeaderError::Api {
        lease: LEASE.into(),
        source: Box::new(kube::Error::Service(Box::new(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            "connection refused",
        )))),
    }
}

fn conflict() -> LeaderError {
    LeaderError::Conflict {
        lease: LEASE.into(),
    }
}

impl LeaseStore for MemStore {
    fn get(&self) -> BoxFuture<'_, Result<Option<Lease>, LeaderError>> {
        Box::pin(async move {
            self.enter().await?;
            Ok(self.backend.lock().unwrap().lease.clone())
        })
    }

    fn create<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, LeaderError>> {
        Box::pin(async move {
            self.enter().await?;
            let mut backend = self.backend.lock().unwrap();
            if backend.lease.is_some() {
                return Err(conflict()); // 409 AlreadyExists
            }
            Ok(backend.store(&self.who, lease.clone()))
        })
    }

    fn replace<'a>(&'a self, lease: &'a Lease) -> BoxFuture<'a, Result<Lease, LeaderError>> {
        Box::pin(async move {
            self.enter().await?;
            let intruder = self.faults.lock().unwrap().intrude.take();
            let mut backend = self.backend.lock().unwrap();
            if let Some((by, record)) = intruder {
                backend.put(&by, &record);
            }
            let current = backend.lease.as_ref().ok_or_else(conflict)?;
            if current.metadata.resource_version != lease.metadata.resource_version {
                return Err(conflict()); // 409 Conflict
            }
            Ok(backend.store(&self.who, lease.clone()))
        })
    }

    /// The backend's watch; it ignores the faults (a cut-off candidate's attempts fail anyway).
    fn follow(&self) -> Option<watch::Receiver<Option<Lease>>> {
        self.follows
            .then(|| self.backend.lock().unwrap().watch.subscribe())
    }
}

//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's semantics and the CSI
//! sidecars' flags, so Rust and Go replicas sharing a lease name exclude each other.
//!
//! A [`LeaderElector`] runs as one task and publishes "we lead" on a `watch` channel. Consumers wait
//! for `true`, start their controllers under a child `CancellationToken`, and cancel them when it
//! turns `false`; the elector then competes again (the process does not exit).
//!
//! # Invariants
//! - **Every write is conditioned on the `resourceVersion` read** (PUT) or is a create; 409 means
//!   another candidate won the race and never leads to two holders.
//! - **Others' claims are judged on the local monotonic clock** (see [`decide`]): a lease held by
//!   someone else is taken over only when its record has stayed unchanged for *its*
//!   `leaseDurationSeconds`, counted from when we first saw it.
//! - **Self-fencing**: the leader publishes `false` at the latest `renew_deadline` after the start of
//!   its last successful renewal. Others need `lease_duration` of no change to take over, so with
//!   `lease_duration > renew_deadline` the old leader has stood down `lease_duration -
//!   renew_deadline` (5 s by default) before anyone else may start.
//! - `leader_election_master_status{name}` and the watch channel change together.
//!
//! Module layout: [`decide`] is the pure decision logic, [`store`] the Lease I/O, [`elector`] the
//! loop that joins them, and [`group`] runs the controllers while every Lease of a group is held.

pub(crate) mod decide;
mod elector;
pub mod group;
mod store;
#[cfg(test)]
pub(crate) mod tests;

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::time::Instant;

pub use elector::LeaderElector;
pub use store::{KubeLeaseStore, LeaseStore};

/// Default `--leader-election-lease-duration`: how long others wait on an unchanged record.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
/// Default `--leader-election-renew-deadline`: how long the leader keeps leading without a renewal.
pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// Default `--leader-election-retry-period`: the interval between attempts.
pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(5);
/// client-go's `JitterFactor`: a candidate waits `retry_period * (1 + rand[0,1) * 1.2)` between
/// attempts, and `renew_deadline` must exceed `retry_period * 1.2`.
pub const JITTER_FACTOR: f64 = 1.2;
/// csi-lib-utils' `DefaultHealthCheckTimeout`: how far past `lease_duration` a leader may go
/// without renewing before [`LeaderHealth::check`] fails.
pub const DEFAULT_HEALTH_TIMEOUT: Duration = Duration::from_secs(20);
/// The HTTP path on which the sidecars serve [`LeaderHealth::check`].
pub const HEALTH_PATH: &str = "/healthz/leader-election";
/// Gauge, 1 while leading, labelled `name` = lease name (component-base's name).
pub const MASTER_STATUS_METRIC: &str = "leader_election_master_status";
/// Counter of renewals that had to re-read the Lease (exposed with the `_total` suffix).
pub const SLOWPATH_METRIC: &str = "leader_election_slowpath";

/// Makes a lease name or identity the way csi-lib-utils' `sanitizeName` does, so our Lease names
/// match the Go sidecars': every character outside `[a-zA-Z0-9-]` becomes `-`, and a trailing `-`
/// gets an `X` appended (`hostpath.csi.k8s.io` → `hostpath-csi-k8s-io`).
pub fn sanitize_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if out.ends_with('-') {
        out.push('X');
    }
    out
}

/// Leader-election settings (the sidecars' `--leader-election-*` flags).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderElectionConfig {
    /// Lease name. Use the upstream sidecar's name (through [`sanitize_name`]) to exclude Go
    /// replicas during a migration.
    pub lease_name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// Our identity in `holderIdentity`, unique per replica: the pod name.
    pub identity: String,
    /// How long a record must stay unchanged, observed locally, before others take over. Written
    /// to `leaseDurationSeconds` in whole seconds.
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// Interval between attempts (jittered for candidates).
    pub retry_period: Duration,
    /// Release the Lease (empty holder, 1 s duration) when shutdown is cancelled, so a successor
    /// starts at once instead of after `lease_duration`.
    pub release_on_cancel: bool,
    /// Labels put on the Lease when we create or write it (`--leader-election-labels`).
    pub labels: std::collections::BTreeMap<String, String>,
}

impl LeaderElectionConfig {
    /// A configuration with the sidecars' default timings (15 s / 10 s / 5 s), release on cancel
    /// and no labels.
    pub fn new(
        lease_name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Self {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: DEFAULT_LEASE_DURATION,
            renew_deadline: DEFAULT_RENEW_DEADLINE,
            retry_period: DEFAULT_RETRY_PERIOD,
            release_on_cancel: true,
            labels: Default::default(),
        }
    }

    /// Checks client-go's constraints: `lease_duration > renew_deadline > retry_period *
    /// JITTER_FACTOR`, all positive, `lease_duration` at least one second (it is written in whole
    /// seconds), and non-empty names.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let fail = |reason: &str| Err(LeaderError::InvalidConfig(reason.to_owned()));
        if self.lease_name.is_empty() {
            return fail("lease name must not be empty");
        }
        if self.namespace.is_empty() {
            return fail("namespace must not be empty");
        }
        if self.identity.is_empty() {
            return fail("identity must not be empty");
        }
        if self.retry_period.is_zero() {
            return fail("retry period must be greater than zero");
        }
        if self.lease_duration < Duration::from_secs(1) {
            return fail("lease duration must be at least one second");
        }
        if self.lease_duration <= self.renew_deadline {
            return fail("lease duration must be greater than renew deadline");
        }
        if self.renew_deadline <= self.retry_period.mul_f64(JITTER_FACTOR) {
            return fail("renew deadline must be greater than retry period * 1.2");
        }
        Ok(())
    }
}

/// What went wrong in leader election, and what happens next.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LeaderError {
    /// The configuration breaks a timing or naming rule; fix the flags.
    #[error("invalid leader election config: {0}")]
    InvalidConfig(String),
    /// Someone else wrote (or created, or deleted) the Lease since we read it. The elector
    /// re-reads it on the next attempt.
    #[error("lease {lease} was changed by another writer; re-reading it")]
    Conflict {
        /// Lease name.
        lease: String,
    },
    /// An API call failed; retried on the next attempt. Check RBAC (`leases`: get, create,
    /// update) and API reachability.
    #[error("lease {lease}: API call failed: {source}")]
    Api {
        /// Lease name.
        lease: String,
        /// The client error.
        #[source]
        source: Box<kube::Error>,
    },
    /// An attempt did not finish in time; retried on the next attempt.
    #[error("lease {lease}: attempt timed out after {after:?}")]
    Timeout {
        /// Lease name.
        lease: String,
        /// The bound that was hit.
        after: Duration,
    },
    /// We are leading but have not renewed for too long: the election task is stuck or gone.
    /// Reported by [`LeaderHealth::check`]; a liveness probe should restart the process.
    #[error("failed election to renew leadership on lease {lease}: last renewal {since:?} ago")]
    RenewOverdue {
        /// Lease name.
        lease: String,
        /// Time since the last successful renewal.
        since: Duration,
    },
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabel {
    name: String,
}

/// The election metrics, under component-base's names. Register once per registry and share the
/// handle between electors of different leases.
#[derive(Clone, Debug)]
pub struct LeaderMetrics {
    master_status: Family<LeaseLabel, Gauge>,
    slowpath: Family<LeaseLabel, Counter>,
}

impl LeaderMetrics {
    /// Registers `leader_election_master_status` and `leader_election_slowpath_total`.
    ///
    /// # Warning
    /// Registering twice in one registry exposes each family twice, which Prometheus rejects;
    /// clone the returned handle instead.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            master_status: Family::default(),
            slowpath: Family::default(),
        };
        registry.register(
            MASTER_STATUS_METRIC,
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, \
             1 indicates master. 'name' is the string used to identify the lease. Please make sure \
             to group by name",
            metrics.master_status.clone(),
        );
        registry.register(
            SLOWPATH_METRIC,
            "Total number of slow path exercised in renewing leader leases. 'name' is the string \
             used to identify the lease. Please make sure to group by name",
            metrics.slowpath.clone(),
        );
        metrics
    }

    /// Creates both series for `lease` (at 0), so they are scraped before anything happens.
    fn init(&self, lease: &str) {
        self.set_leading(lease, false);
        let _series = self.slowpath.get_or_create(&label(lease));
    }

    fn set_leading(&self, lease: &str, leading: bool) {
        self.master_status
            .get_or_create(&label(lease))
            .set(i64::from(leading));
    }

    fn slowpath(&self, lease: &str) {
        self.slowpath.get_or_create(&label(lease)).inc();
    }
}

fn label(lease: &str) -> LeaseLabel {
    LeaseLabel {
        name: lease.to_owned(),
    }
}

/// What the election task shares with [`LeaderHealth`].
#[derive(Debug, Default)]
struct Status {
    /// What we last published on the watch channel.
    leading: bool,
    /// Start of our last successful write of the Lease.
    last_renew: Option<Instant>,
    /// The holder we last saw (empty: none).
    holder: String,
}

/// A cheap-clone view of an elector for health checks (client-go's `HealthzAdaptor`).
#[derive(Clone)]
pub struct LeaderHealth {
    status: Arc<Mutex<Status>>,
    lease: Arc<str>,
    lease_duration: Duration,
    timeout: Duration,
}

impl fmt::Debug for LeaderHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeaderHealth")
            .field("lease", &self.lease)
            .field("timeout", &self.timeout)
            .field("status", &*lock(&self.status))
            .finish()
    }
}

impl LeaderHealth {
    fn new(status: Arc<Mutex<Status>>, lease: &str, lease_duration: Duration) -> Self {
        Self {
            status,
            lease: lease.into(),
            lease_duration,
            timeout: DEFAULT_HEALTH_TIMEOUT,
        }
    }

    /// Tolerate `timeout` past `lease_duration` (default [`DEFAULT_HEALTH_TIMEOUT`]).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Fails when we are leading but our last successful renewal is older than
    /// `lease_duration + timeout` (client-go `LeaderElector.Check`). Not leading is healthy.
    ///
    /// The elector stands down by itself after `renew_deadline`, so this fails only when its task
    /// is wedged or died (panicked) while leading: leadership is then still published but no
    /// longer backed by the Lease, which a liveness probe should answer with a restart.
    pub fn check(&self) -> Result<(), LeaderError> {
        let status = lock(&self.status);
        if !status.leading {
            return Ok(());
        }
        let since = status.last_renew.map_or(Duration::MAX, |at| at.elapsed());
        if since > self.lease_duration.saturating_add(self.timeout) {
            return Err(LeaderError::RenewOverdue {
                lease: self.lease.to_string(),
                since,
            });
        }
        Ok(())
    }

    /// `check().is_ok()`.
    pub fn is_healthy(&self) -> bool {
        self.check().is_ok()
    }

    /// Whether we currently publish leadership.
    pub fn is_leading(&self) -> bool {
        lock(&self.status).leading
    }

    /// The holder we last observed, if any (may be us).
    pub fn leader(&self) -> Option<String> {
        let status = lock(&self.status);
        (!status.holder.is_empty()).then(|| status.holder.clone())
    }
}

/// The status is plain data, always consistent between statements, so a poisoned lock is usable.
fn lock(status: &Mutex<Status>) -> MutexGuard<'_, Status> {
    status.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod config_tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_sidecars() {
        let c = LeaderElectionConfig::new("external-attacher-leader-x", "ns", "pod-0");
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(5)
            )
        );
        c.validate().unwrap();
    }

    #[test]
    fn validate_rejects_what_client_go_rejects() {
        let base = LeaderElectionConfig::new("l", "ns", "id");
        let cases: Vec<(&str, LeaderElectionConfig)> = vec![
            (
                "lease duration == renew deadline",
                LeaderElectionConfig {
                    lease_duration: Duration::from_secs(10),
                    ..base.clone()
                },
            ),
            (
                "renew deadline == retry * 1.2",
                LeaderElectionConfig {
                    renew_deadline: Duration::from_secs(6),
                    ..base.clone()
                },
            ),
            (
                "zero retry",
                LeaderElectionConfig {
                    retry_period: Duration::ZERO,
                    ..base.clone()
                },
            ),
            (
                "sub-second lease",
                LeaderElectionConfig {
                    lease_duration: Duration::from_millis(900),
                    renew_deadline: Duration::from_millis(500),
                    retry_period: Duration::from_millis(100),
                    ..base.clone()
                },
            ),
            (
                "empty identity",
                LeaderElectionConfig {
                    identity: String::new(),
                    ..base.clone()
                },
            ),
            (
                "empty lease name",
                LeaderElectionConfig {
                    lease_name: String::new(),
                    ..base.clone()
                },
            ),
        ];
        for (case, config) in cases {
            assert!(
                matches!(config.validate(), Err(LeaderError::InvalidConfig(_))),
                "{case}"
            );
        }
        // Just above the jitter bound is fine.
        LeaderElectionConfig {
            renew_deadline: Duration::from_millis(6001),
            ..base
        }
        .validate()
        .unwrap();
    }

    #[test]
    fn sanitize_name_matches_csi_lib_utils() {
        assert_eq!(sanitize_name("hostpath.csi.k8s.io"), "hostpath-csi-k8s-io");
        assert_eq!(
            sanitize_name("external-attacher-leader-hostpath.csi.k8s.io"),
            "external-attacher-leader-hostpath-csi-k8s-io"
        );
        assert_eq!(sanitize_name("example.com/driver"), "example-com-driver");
        assert_eq!(sanitize_name("driver."), "driver-X");
    }
}

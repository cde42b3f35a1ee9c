//! The pure half of leader election: given the Lease record just read, the local instant at which
//! that record was first seen unchanged, the time now and our identity, decide what to do. No I/O
//! and no wall clock, so every rule is table-tested here.
//!
//! # Invariants
//! - Another holder's claim is judged only on the **local monotonic clock**: it lapses when the
//!   record has not changed for the record's own `leaseDurationSeconds` since *we* first saw that
//!   version of it (client-go `isLeaseValid`). The remote `renewTime` is never compared with our
//!   wall clock, so skew between nodes cannot cause a takeover.
//! - A record naming us is ours to renew; a record with an empty holder is free at once.
//! - The record we write keeps `acquireTime` and `leaseTransitions` on renewal, and sets a fresh
//!   `acquireTime` and `leaseTransitions + 1` whenever the holder changes (client-go
//!   `tryAcquireOrRenew`).

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use tokio::time::Instant;

/// The leader-election fields of a Lease spec (client-go's `LeaderElectionRecord`).
///
/// Equality over all fields is what "the record changed" means for observation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    /// `holderIdentity`; empty when nobody holds the lease (never held, or released).
    pub(crate) holder: String,
    /// `leaseDurationSeconds` as written by the holder; honoured when judging its claim.
    pub(crate) lease_duration_seconds: i32,
    /// `acquireTime`: when the current holder took the lease.
    pub(crate) acquire_time: Option<Timestamp>,
    /// `renewTime`: the holder's last write (informational only; never compared with our clock).
    pub(crate) renew_time: Option<Timestamp>,
    /// `leaseTransitions`: how many times the holder changed.
    pub(crate) transitions: i32,
}

impl LeaseRecord {
    /// Reads the record out of a Lease; absent fields read as zero values, as client-go does.
    pub(crate) fn from_lease(lease: &Lease) -> Self {
        let Some(spec) = lease.spec.as_ref() else {
            return Self::default();
        };
        Self {
            holder: spec.holder_identity.clone().unwrap_or_default(),
            lease_duration_seconds: spec.lease_duration_seconds.unwrap_or_default(),
            acquire_time: spec.acquire_time.as_ref().map(|t| t.0),
            renew_time: spec.renew_time.as_ref().map(|t| t.0),
            transitions: spec.lease_transitions.unwrap_or_default(),
        }
    }

    /// The spec to write. Like client-go, the whole spec is replaced, so `preferredHolder` and
    /// `strategy` (coordinated election, which we do not take part in) are dropped.
    pub(crate) fn to_spec(&self) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(self.lease_duration_seconds),
            acquire_time: self.acquire_time.map(MicroTime),
            renew_time: self.renew_time.map(MicroTime),
            lease_transitions: Some(self.transitions),
            ..LeaseSpec::default()
        }
    }

    /// The record a new holder `me` writes over `previous` (`None`: the Lease is being created).
    pub(crate) fn acquired(
        previous: Option<&LeaseRecord>,
        me: &str,
        lease_duration: Duration,
        now: Timestamp,
    ) -> Self {
        Self {
            holder: me.to_owned(),
            lease_duration_seconds: whole_seconds(lease_duration),
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions: previous.map_or(0, |p| p.transitions.saturating_add(1)),
        }
    }

    /// The record the current holder `me` writes to renew: same `acquireTime` and transitions.
    pub(crate) fn renewed(&self, me: &str, lease_duration: Duration, now: Timestamp) -> Self {
        Self {
            holder: me.to_owned(),
            lease_duration_seconds: whole_seconds(lease_duration),
            acquire_time: self.acquire_time.or(Some(now)),
            renew_time: Some(now),
            transitions: self.transitions,
        }
    }

    /// The record a holder writes to give the lease up (client-go `tryRelease`): empty holder,
    /// `leaseDurationSeconds: 1`, times set to now, transitions unchanged.
    pub(crate) fn released(&self, now: Timestamp) -> Self {
        Self {
            holder: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(now),
            renew_time: Some(now),
            transitions: self.transitions,
        }
    }
}

/// `leaseDurationSeconds` for a duration: whole seconds, truncated like client-go's
/// `int(LeaseDuration / time.Second)`.
pub(crate) fn whole_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// A record together with the local instant from which it has been seen unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Observed {
    /// The record as last read or written.
    pub(crate) record: LeaseRecord,
    /// Local monotonic instant at which this exact record was first seen.
    pub(crate) since: Instant,
}

impl Observed {
    /// Folds a freshly read `record` into the previous observation: the instant moves to `now`
    /// only when the record differs from the one seen before.
    pub(crate) fn update(previous: Option<Observed>, record: LeaseRecord, now: Instant) -> Self {
        match previous {
            Some(prev) if prev.record == record => prev,
            _ => Self { record, since: now },
        }
    }

    /// When the holder's claim lapses by local observation: `since + leaseDurationSeconds` of the
    /// record itself (not our configured duration). A non-positive duration lapses at once.
    pub(crate) fn expires_at(&self) -> Instant {
        let secs = u64::try_from(self.record.lease_duration_seconds).unwrap_or(0);
        self.since + Duration::from_secs(secs)
    }
}

/// Why a lease is free for the taking.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Vacancy {
    /// `holderIdentity` is empty: never held, or released by its holder.
    Unheld,
    /// `holder`'s record has not changed for its lease duration, measured locally.
    Expired {
        /// The holder whose claim lapsed.
        holder: String,
    },
}

/// What a candidate does next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// No Lease exists: create it naming us (409 AlreadyExists means someone else won).
    Create,
    /// The record names us: renew it, keeping `acquireTime` and `leaseTransitions`.
    Renew,
    /// Nobody holds a current claim: take it over (`leaseTransitions + 1`).
    Acquire(Vacancy),
    /// Someone else holds a current claim.
    Follow {
        /// The current holder.
        holder: String,
        /// How long until the claim lapses if the record stays unchanged.
        expires_in: Duration,
    },
}

/// Decides what `me` should do about the observed Lease (`None`: it does not exist) at `now`.
pub(crate) fn decide(observed: Option<&Observed>, now: Instant, me: &str) -> Decision {
    let Some(observed) = observed else {
        return Decision::Create;
    };
    let holder = &observed.record.holder;
    if holder == me {
        return Decision::Renew;
    }
    if holder.is_empty() {
        return Decision::Acquire(Vacancy::Unheld);
    }
    let expires_at = observed.expires_at();
    if now < expires_at {
        Decision::Follow {
            holder: holder.clone(),
            expires_in: expires_at - now,
        }
    } else {
        Decision::Acquire(Vacancy::Expired {
            holder: holder.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ME: &str = "me-0";
    const OTHER: &str = "other-1";

    fn record(holder: &str, lease_duration_seconds: i32, transitions: i32) -> LeaseRecord {
        LeaseRecord {
            holder: holder.to_owned(),
            lease_duration_seconds,
            acquire_time: Some(Timestamp::UNIX_EPOCH),
            renew_time: Some(Timestamp::UNIX_EPOCH),
            transitions,
        }
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn decide_table() {
        let t0 = Instant::now();
        // (case, record or None for "no Lease", seconds since first seen, expected)
        let cases: Vec<(&str, Option<LeaseRecord>, u64, Decision)> = vec![
            ("no lease object -> create", None, 0, Decision::Create),
            (
                "fresh lease without holder -> acquire",
                Some(LeaseRecord::default()),
                0,
                Decision::Acquire(Vacancy::Unheld),
            ),
            (
                "released lease (empty holder, 1 s) -> acquire immediately",
                Some(record("", 1, 4)),
                0,
                Decision::Acquire(Vacancy::Unheld),
            ),
            (
                "held by other, recently changed -> follow",
                Some(record(OTHER, 15, 0)),
                3,
                Decision::Follow {
                    holder: OTHER.into(),
                    expires_in: secs(12),
                },
            ),
            (
                "held by other, unchanged for exactly its duration -> acquire",
                Some(record(OTHER, 15, 0)),
                15,
                Decision::Acquire(Vacancy::Expired {
                    holder: OTHER.into(),
                }),
            ),
            (
                "held by other, unchanged for longer than its duration -> acquire",
                Some(record(OTHER, 15, 0)),
                40,
                Decision::Acquire(Vacancy::Expired {
                    holder: OTHER.into(),
                }),
            ),
            (
                "record's longer duration honoured over ours -> follow",
                Some(record(OTHER, 60, 0)),
                40,
                Decision::Follow {
                    holder: OTHER.into(),
                    expires_in: secs(20),
                },
            ),
            (
                "record's shorter duration honoured over ours -> acquire",
                Some(record(OTHER, 5, 0)),
                6,
                Decision::Acquire(Vacancy::Expired {
                    holder: OTHER.into(),
                }),
            ),
            (
                "zero duration lapses at once",
                Some(record(OTHER, 0, 0)),
                0,
                Decision::Acquire(Vacancy::Expired {
                    holder: OTHER.into(),
                }),
            ),
            (
                "held by us -> renew",
                Some(record(ME, 15, 2)),
                1,
                Decision::Renew,
            ),
            (
                "held by us even if lapsed -> renew",
                Some(record(ME, 15, 2)),
                100,
                Decision::Renew,
            ),
        ];
        for (case, rec, seen_for, want) in cases {
            let observed = rec.map(|record| Observed { record, since: t0 });
            let got = decide(observed.as_ref(), t0 + secs(seen_for), ME);
            assert_eq!(got, want, "{case}");
        }
    }

    #[test]
    fn observation_instant_moves_only_when_the_record_changes() {
        let t0 = Instant::now();
        let first = Observed::update(None, record(OTHER, 15, 0), t0);
        assert_eq!(first.since, t0);

        // Same record read again later: still observed since t0, so it can lapse.
        let same = Observed::update(Some(first.clone()), record(OTHER, 15, 0), t0 + secs(10));
        assert_eq!(same.since, t0);
        assert!(matches!(
            decide(Some(&same), t0 + secs(16), ME),
            Decision::Acquire(_)
        ));

        // The holder renewed (renewTime changed): observation restarts, claim is current again.
        let mut renewed = record(OTHER, 15, 0);
        renewed.renew_time = Some(Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(5));
        let changed = Observed::update(Some(same), renewed, t0 + secs(14));
        assert_eq!(changed.since, t0 + secs(14));
        assert_eq!(
            decide(Some(&changed), t0 + secs(16), ME),
            Decision::Follow {
                holder: OTHER.into(),
                expires_in: secs(13),
            }
        );
    }

    #[test]
    fn remote_renew_time_far_in_the_past_does_not_expire_a_fresh_observation() {
        // The holder's wall clock is hours behind ours: irrelevant, only local observation counts.
        let t0 = Instant::now();
        let mut skewed = record(OTHER, 15, 0);
        skewed.renew_time = Some(Timestamp::UNIX_EPOCH);
        let observed = Observed::update(None, skewed, t0);
        assert!(matches!(
            decide(Some(&observed), t0 + secs(1), ME),
            Decision::Follow { .. }
        ));
    }

    #[test]
    fn written_records() {
        let t = Timestamp::UNIX_EPOCH + jiff::SignedDuration::from_secs(1000);
        let old = LeaseRecord {
            holder: OTHER.into(),
            lease_duration_seconds: 30,
            acquire_time: Some(Timestamp::UNIX_EPOCH),
            renew_time: Some(Timestamp::UNIX_EPOCH),
            transitions: 3,
        };

        let created = LeaseRecord::acquired(None, ME, secs(15), t);
        assert_eq!(
            created,
            LeaseRecord {
                holder: ME.into(),
                lease_duration_seconds: 15,
                acquire_time: Some(t),
                renew_time: Some(t),
                transitions: 0,
            }
        );

        let taken = LeaseRecord::acquired(Some(&old), ME, secs(15), t);
        assert_eq!(taken.transitions, 4, "takeover increments transitions");
        assert_eq!(taken.acquire_time, Some(t));
        assert_eq!(
            taken.lease_duration_seconds, 15,
            "we write our own duration"
        );

        let renewed = taken.renewed(ME, secs(15), t + jiff::SignedDuration::from_secs(5));
        assert_eq!(renewed.acquire_time, Some(t), "renew keeps acquireTime");
        assert_eq!(
            renewed.renew_time,
            Some(t + jiff::SignedDuration::from_secs(5))
        );
        assert_eq!(renewed.transitions, 4, "renew keeps transitions");

        let released = renewed.released(t);
        assert_eq!(released.holder, "");
        assert_eq!(released.lease_duration_seconds, 1);
        assert_eq!(released.transitions, 4);

        // Round trip through the API type; the holder is written even when empty, like client-go.
        let spec = released.to_spec();
        assert_eq!(spec.holder_identity.as_deref(), Some(""));
        let lease = Lease {
            spec: Some(spec),
            ..Lease::default()
        };
        assert_eq!(LeaseRecord::from_lease(&lease), released);
    }

    #[test]
    fn lease_duration_is_truncated_to_whole_seconds() {
        assert_eq!(whole_seconds(Duration::from_millis(15_900)), 15);
        assert_eq!(whole_seconds(Duration::from_secs(u64::MAX)), i32::MAX);
    }
}

//! Node deployment's competition for Immediate claims without a node (upstream's
//! `becomeOwner`): a per-claim, jittered delay, a capacity check, then a resourceVersion-
//! conditioned claim on `selected-node`; a lost race waits longer next time.

use controller_kit::patch::PatchKind;
use controller_kit::{NamespacedName, Outcome};
use csi::v1;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::storage::v1::StorageClass;
use tokio::time::Instant;

use super::Shared;
use crate::error::Error;
use crate::node;
use crate::patch;

/// A jitter in `[0, 1)` for a claim's competition delay: different per claim and per moment.
fn jitter(uid: &str) -> f64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let h = crate::capacity::plan::fnv1a_32(uid.as_bytes()) ^ nanos.wrapping_mul(0x9e37_79b9);
    f64::from(h) / (f64::from(u32::MAX) + 1.0)
}

impl Shared {
    pub(super) fn forget_competition(&self, uid: &str) {
        self.competing.remove(uid);
    }

    /// Node deployment, upstream's `becomeOwner` for an Immediate claim without a node: after a
    /// per-claim delay (a pass that comes back later, not a blocked worker), check capacity, then
    /// set `selected-node` to this node with a resourceVersion-conditioned patch. Whoever wins,
    /// the claim's update brings it back; a lost race waits longer next time.
    pub(super) async fn compete(
        &self,
        pvc: &PersistentVolumeClaim,
        class: &StorageClass,
        nd: &node::NodeDeployment,
    ) -> Result<Outcome, Error> {
        let uid = pvc.metadata.uid.clone().unwrap_or_default();
        let now = Instant::now();
        // Claims deleted while competed for are not seen again: the memory forgets them.
        let wait = match self.competing.get(&uid) {
            None => {
                let at = now + node::compete_delay(nd, 0, jitter(&uid));
                self.competing.insert(uid.clone(), (at, 0));
                at.saturating_duration_since(now)
            }
            Some((at, _)) => at.saturating_duration_since(now),
        };
        if !wait.is_zero() {
            return Ok(Outcome::RequeueAfter(wait));
        }
        let requested = pvc
            .spec
            .as_ref()
            .and_then(|s| s.resources.as_ref()?.requests.as_ref()?.get("storage"))
            .and_then(|q| controller_kit::quantity::parse_bytes(&q.0))
            .unwrap_or(0);
        let request = v1::GetCapacityRequest {
            volume_capabilities: Vec::new(),
            parameters: crate::params::strip_prefixed(
                &class.parameters.clone().unwrap_or_default(),
            )
            .unwrap_or_default()
            .into_iter()
            .collect(),
            accessible_topology: (!nd.segment.is_empty()).then(|| v1::Topology {
                segments: nd.segment.clone().into_iter().collect(),
            }),
        };
        match self.csi.get_capacity(request).await {
            Ok(c) if c.available_capacity < requested => {
                tracing::info!(pvc = %pvc.metadata.name.as_deref().unwrap_or_default(), available = c.available_capacity, requested, "not enough capacity on this node to compete for the claim");
                self.schedule_next_try(&uid, nd);
                return Ok(Outcome::RequeueAfter(nd.max_delay));
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "capacity check failed; competing for the claim anyway")
            }
        }
        let patch = patch::select_node(pvc.metadata.resource_version.as_deref(), &nd.node);
        let ns = pvc.metadata.namespace.as_deref().unwrap_or_default();
        let name = pvc.metadata.name.as_deref().unwrap_or_default();
        let action = "select this node for the claim";
        match self
            .writes
            .claim(ns, name, PatchKind::Merge, &patch, action)
            .await
        {
            Ok(_) => {
                tracing::info!(pvc = %NamespacedName::new(ns, name), node = %nd.node, "this node took the claim");
                self.forget_competition(&uid);
                Ok(Outcome::Done)
            }
            Err(e) if e.is_conflict() => {
                self.schedule_next_try(&uid, nd);
                Ok(Outcome::Done)
            }
            Err(e) => Err(e),
        }
    }

    /// A lost or refused try: the next waits longer.
    pub(super) fn schedule_next_try(&self, uid: &str, nd: &node::NodeDeployment) {
        let failures = self.competing.get(uid).map_or(0, |(_, f)| f) + 1;
        let at = Instant::now() + node::compete_delay(nd, failures, jitter(uid));
        self.competing.insert(uid.to_string(), (at, failures));
    }
}

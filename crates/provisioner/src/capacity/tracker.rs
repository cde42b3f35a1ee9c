//! The tracker, the act part of capacity tracking: CSIStorageCapacity objects from GetCapacity for
//! every (StorageClass, topology segment) item, as upstream's `pkg/capacity`.
//!
//! - The items follow the driver's CSINodes, the Nodes' labels and its StorageClasses (informer
//!   events wake [`Tracker::items_loop`]); every `--capacity-poll-interval` all items are queued
//!   again, and a provisioning or a deletion queues its class's items.
//! - The objects are watched in their namespace only (upstream's Role suffices), with the driver
//!   and managed-by labels. An object deleted or changed by someone else wakes the items loop,
//!   which re-creates what is missing and deletes obsolete or duplicate objects.
//! - Writes are creates (`generateName: csisc-`), merge patches carrying the resourceVersion,
//!   and deletes with a UID precondition; all through the capacity client
//!   (`--kube-api-capacity-qps`/`-burst`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use controller_kit::{Outcome, WorkQueue};
use csi::v1;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::storage::v1::{CSINode, CSIStorageCapacity, StorageClass};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams,
    PostParams, Preconditions,
};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::plan::{self as capacity, Item, Reported};
use super::{CapacityConfig, CapacityMetrics};
use crate::api::call_api;
use crate::error::Error;

/// Pause between failed owner look-ups.
const OWNER_RETRY: Duration = Duration::from_secs(5);

/// The capacity tracker of one driver (built by [`super::build`]).
pub struct Tracker {
    pub(super) client: kube::Client,
    pub(super) csi: csi::CsiClient,
    pub(super) driver: String,
    pub(super) config: CapacityConfig,
    pub(super) managed_by: String,
    pub(super) classes: Store<StorageClass>,
    pub(super) csinodes: Option<Store<CSINode>>,
    pub(super) nodes: Option<Store<PartialObjectMeta<Node>>>,
    /// The watched objects; a new cache each leadership term (see [`Tracker::run`]).
    pub(super) objects: Mutex<Store<CSIStorageCapacity>>,
    pub(super) queue: WorkQueue<Item>,
    /// The current items.
    pub(super) items: Mutex<BTreeSet<Item>>,
    /// Wakes the items loop.
    pub(super) changed: Arc<Notify>,
    /// Objects this process created, by item, until the watch shows them (no second create).
    pub(super) created: Mutex<HashMap<Item, CSIStorageCapacity>>,
    pub(super) owner: Mutex<Option<OwnerReference>>,
    pub(super) metrics: CapacityMetrics,
}

impl std::fmt::Debug for Tracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracker")
            .field("driver", &self.driver)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Tracker {
    fn api(&self) -> Api<CSIStorageCapacity> {
        Api::namespaced(self.client.clone(), &self.config.namespace)
    }

    /// Queues the items of `class` (after a provisioning or a deletion in it).
    pub fn class_changed(&self, class: &str) {
        let items = self.items.lock().unwrap_or_else(|e| e.into_inner());
        for item in items.iter().filter(|i| i.class == class) {
            self.queue.add(item.clone());
        }
    }

    fn objects(&self) -> Store<CSIStorageCapacity> {
        self.objects
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Runs the watch of the objects, the items loop and the poll until `token` is cancelled
    /// (the workers run beside it, see [`Tracker::sync_item`]). Called again after leadership
    /// comes back: each term starts from a fresh cache.
    pub async fn run(self: Arc<Self>, token: CancellationToken) {
        let (store, writer) = reflector::store();
        *self.objects.lock().unwrap_or_else(|e| e.into_inner()) = store;
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        // No item is synced before the new cache has listed the objects (it would create a
        // second object for an item whose object the empty cache does not show yet).
        self.items.lock().unwrap_or_else(|e| e.into_inner()).clear();
        if !self.resolve_owner(&token).await {
            return;
        }
        let selector = format!(
            "{}={},{}={}",
            capacity::LABEL_DRIVER,
            self.driver,
            capacity::LABEL_MANAGED_BY,
            self.managed_by
        );
        let changed = self.changed.clone();
        let watch = reflector::reflector(
            writer,
            watcher(self.api(), watcher::Config::default().labels(&selector)),
        )
        .default_backoff()
        .for_each(move |event| {
            match event {
                Ok(_) => changed.notify_one(),
                Err(e) => tracing::warn!(error = %e, "CSIStorageCapacity watch failed; retrying"),
            }
            std::future::ready(())
        });
        let items = self.clone().items_loop(token.clone());
        tokio::select! {
            () = token.cancelled() => {}
            () = watch => {}
            () = items => {}
        }
    }

    /// Upstream's owner: walk up `--capacity-ownerref-level` controllers from this pod. Retries
    /// until it succeeds; returns false if cancelled first.
    async fn resolve_owner(&self, token: &CancellationToken) -> bool {
        if self.config.ownerref_level < 0 {
            return true;
        }
        loop {
            match self.owner_once().await {
                Ok(owner) => {
                    tracing::info!(kind = %owner.kind, name = %owner.name, "CSIStorageCapacity owner");
                    *self.owner.lock().unwrap_or_else(|e| e.into_inner()) = Some(owner);
                    return true;
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot find the owner of CSIStorageCapacity objects; retrying");
                    tokio::select! {
                        () = token.cancelled() => return false,
                        () = tokio::time::sleep(OWNER_RETRY) => {}
                    }
                }
            }
        }
    }

    async fn owner_once(&self) -> Result<OwnerReference, String> {
        let ns = &self.config.namespace;
        if self.config.pod_name.is_empty() {
            return Err("POD_NAME is not set".into());
        }
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let pod = call_api("get pod", pods.get(&self.config.pod_name))
            .await
            .map_err(|e| e.to_string())?;
        let mut current = OwnerReference {
            api_version: "v1".into(),
            kind: "Pod".into(),
            name: self.config.pod_name.clone(),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: None,
        };
        let mut owners = pod.metadata.owner_references.clone().unwrap_or_default();
        for level in 0..self.config.ownerref_level {
            let Some(next) = owners.iter().find(|o| o.controller == Some(true)).cloned() else {
                return Err(format!(
                    "{}/{} \"{}\" in namespace \"{ns}\" has no controlling owner, cannot unwind the ownership further",
                    current.api_version, current.kind, current.name
                ));
            };
            current = next;
            if level + 1 < self.config.ownerref_level {
                let (group, version) = match current.api_version.split_once('/') {
                    Some((g, v)) => (g, v),
                    None => ("", current.api_version.as_str()),
                };
                let gvk = GroupVersionKind::gvk(group, version, &current.kind);
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.client.clone(), ns, &ApiResource::from_gvk(&gvk));
                let object = call_api("get owner", api.get(&current.name))
                    .await
                    .map_err(|e| e.to_string())?;
                owners = object.metadata.owner_references.unwrap_or_default();
            }
        }
        Ok(current)
    }

    /// Recomputes the items when topology or classes change, and every poll interval queues
    /// them all; deletes obsolete objects.
    async fn items_loop(self: Arc<Self>, token: CancellationToken) {
        let mut poll = tokio::time::interval(self.config.poll_interval.max(Duration::from_secs(1)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The objects' first list must be in before anything is created.
        let objects = self.objects();
        tokio::select! {
            () = token.cancelled() => return,
            r = objects.wait_until_ready() => if r.is_err() { return },
        }
        loop {
            let all = tokio::select! {
                () = token.cancelled() => return,
                _ = poll.tick() => true,
                () = self.changed.notified() => false,
            };
            let (added, obsolete) = self.refresh();
            let queue_now: Vec<Item> = if all {
                self.items
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .cloned()
                    .collect()
            } else {
                added
            };
            for item in queue_now {
                self.queue.add(item);
            }
            for (name, uid) in obsolete {
                self.delete_object(&name, &uid).await;
            }
        }
    }

    /// New items (and items whose object disappeared), and obsolete objects (name, UID).
    fn refresh(&self) -> (Vec<Item>, Vec<(String, String)>) {
        let segments = match &self.config.node {
            // Node deployment: this node's segment only.
            Some((_, segment)) => BTreeSet::from([segment.clone()]),
            None => {
                let csinodes = self
                    .csinodes
                    .as_ref()
                    .map(|s| s.state())
                    .unwrap_or_default();
                let labels: BTreeMap<String, BTreeMap<String, String>> = self
                    .nodes
                    .as_ref()
                    .map(|n| {
                        n.state()
                            .iter()
                            .map(|n| {
                                (
                                    n.metadata.name.clone().unwrap_or_default(),
                                    n.metadata.labels.clone().unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let all: Vec<&CSINode> = csinodes.iter().map(|c| c.as_ref()).collect();
                capacity::segments(&all, &labels, &self.driver)
            }
        };
        let classes = self.classes.state();
        let class_refs: Vec<&StorageClass> = classes.iter().map(|c| c.as_ref()).collect();
        let items = capacity::items(
            &segments,
            &class_refs,
            &self.driver,
            self.config.for_immediate_binding,
        );
        let objects = self.objects().state();
        let (assigned, obsolete) = capacity::assign(
            objects
                .iter()
                .map(|o| (o.metadata.name.as_deref().unwrap_or_default(), o.as_ref())),
            &items,
        );
        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
        // The watch shows it now, or its item is gone: forget our own copy.
        created.retain(|item, _| items.contains(item) && !assigned.contains_key(item));
        let added: Vec<Item> = items
            .iter()
            .filter(|i| !assigned.contains_key(*i) && !created.contains_key(*i))
            .cloned()
            .collect();
        let uid_of = |name: &str| {
            objects
                .iter()
                .find(|o| o.metadata.name.as_deref() == Some(name))
                .and_then(|o| o.metadata.uid.clone())
                .unwrap_or_default()
        };
        let obsolete: Vec<(String, String)> = obsolete
            .into_iter()
            .map(|n| {
                let uid = uid_of(&n);
                (n, uid)
            })
            .collect();
        self.metrics.goal.set(items.len() as i64);
        self.metrics.current.set(assigned.len() as i64);
        self.metrics.obsolete.set(obsolete.len() as i64);
        *self.items.lock().unwrap_or_else(|e| e.into_inner()) = items;
        (added, obsolete)
    }

    async fn delete_object(&self, name: &str, uid: &str) {
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(uid.to_string()),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match call_api(
            "delete CSIStorageCapacity",
            self.api().delete(name, &params),
        )
        .await
        {
            Ok(_) => tracing::info!(object = %name, "deleted obsolete CSIStorageCapacity"),
            Err(e) if e.is_not_found() || e.is_conflict() => {}
            Err(e) => {
                tracing::warn!(object = %name, error = %e, "cannot delete CSIStorageCapacity")
            }
        }
    }

    /// One item: GetCapacity, then create or patch its object.
    pub async fn sync_item(&self, item: &Item) -> Result<Outcome, Error> {
        if !self
            .items
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(item)
        {
            return Ok(Outcome::Done);
        }
        let Some(class) = self
            .classes
            .get(&kube::runtime::reflector::ObjectRef::new(&item.class))
        else {
            return Ok(Outcome::Done);
        };
        let request = v1::GetCapacityRequest {
            volume_capabilities: Vec::new(),
            // As upstream: the class's parameters as they are, not stripped.
            parameters: class
                .parameters
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect(),
            accessible_topology: (!item.segment.is_empty()).then(|| v1::Topology {
                segments: item.segment.clone().into_iter().collect(),
            }),
        };
        let answer = self
            .csi
            .get_capacity(request)
            .await
            .map_err(|e| Error::Csi {
                action: format!("GetCapacity for {item}"),
                source: Box::new(e),
            })?;
        let reported = Reported {
            capacity: answer.available_capacity,
            maximum: answer.maximum_volume_size,
        };
        let owner = self.owner.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let existing = self.object_of(item);
        match existing {
            None => {
                let object = capacity::new_object(
                    item,
                    reported,
                    &self.driver,
                    &self.managed_by,
                    owner.as_ref(),
                );
                let made = call_api(
                    "create CSIStorageCapacity",
                    self.api().create(&PostParams::default(), &object),
                )
                .await?;
                tracing::debug!(%item, object = ?made.metadata.name, capacity = reported.capacity, "created CSIStorageCapacity");
                self.created
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(item.clone(), made);
            }
            Some(object) => {
                let Some(patch) = capacity::update(&object, reported, owner.as_ref()) else {
                    return Ok(Outcome::Done);
                };
                let name = object.metadata.name.clone().unwrap_or_default();
                let patched = call_api(
                    "update CSIStorageCapacity",
                    self.api()
                        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
                )
                .await;
                match patched {
                    Ok(p) => {
                        let mut created = self.created.lock().unwrap_or_else(|e| e.into_inner());
                        if created.contains_key(item) {
                            created.insert(item.clone(), p);
                        }
                    }
                    Err(e) if e.is_not_found() => {
                        // Deleted meanwhile: forget it and create it again.
                        self.created
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .remove(item);
                        return Err(e);
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Outcome::Done)
    }

    /// The object standing for `item`: the watched one, else the one this process just created.
    fn object_of(&self, item: &Item) -> Option<CSIStorageCapacity> {
        // Duplicates are deleted by the items loop; any one of them will do meanwhile.
        if let Some(o) = self
            .objects()
            .state()
            .into_iter()
            .find(|o| capacity::item_of(o).as_ref() == Some(item))
        {
            return Some((*o).clone());
        }
        self.created
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(item)
            .cloned()
    }
}

//! The fake API server's state: objects keyed by URL path, one global resourceVersion counter, the
//! bounded event history and the broadcast of live events; and the apiserver's answers as
//! `Status` objects.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::broadcast;

pub(super) use super::path::{Collection, Key, ResourcePath};

/// How many events the server remembers for watches that resume from a resourceVersion.
pub(super) const HISTORY: usize = 10_000;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change of the store, as kept in the history and broadcast to watches.
#[derive(Debug)]
pub(super) struct Change {
    pub(super) resource_version: u64,
    pub(super) event: EventType,
    pub(super) key: Key,
    /// The object before the change (for selectors: an object can stop or start matching).
    pub(super) old: Option<Value>,
    pub(super) object: Value,
}

/// An error answer, sent as a `Status` object.
#[derive(Clone, Debug)]
pub(super) struct ApiError {
    pub(super) code: u16,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    /// An error with the reason the apiserver gives to `code`.
    pub(super) fn new(code: u16, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason_for(code),
            message: message.into(),
            details: None,
        }
    }

    pub(super) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, message)
    }

    fn with_details(mut self, key: &Key) -> Self {
        let mut details = json!({"name": key.name, "kind": key.collection.plural});
        if !key.collection.group().is_empty() {
            details["group"] = json!(key.collection.group());
        }
        self.details = Some(details);
        self
    }

    fn not_found(key: &Key) -> Self {
        let message = format!("{} \"{}\" not found", key.collection.qualified(), key.name);
        Self::new(404, message).with_details(key)
    }

    fn already_exists(key: &Key) -> Self {
        let message = format!(
            "{} \"{}\" already exists",
            key.collection.qualified(),
            key.name
        );
        let mut e = Self::new(409, message).with_details(key);
        e.reason = "AlreadyExists";
        e
    }

    fn conflict(key: &Key, why: &str) -> Self {
        let message = format!(
            "Operation cannot be fulfilled on {} \"{}\": {why}",
            key.collection.qualified(),
            key.name
        );
        Self::new(409, message).with_details(key)
    }

    fn modified(key: &Key) -> Self {
        Self::conflict(
            key,
            "the object has been modified; please apply your changes to the latest version and \
             try again",
        )
    }

    /// 410 Gone: the resourceVersion a watch asked for is older than the history kept.
    pub(super) fn expired(requested: u64, oldest: u64) -> Self {
        Self::new(
            410,
            format!("too old resource version: {requested} ({oldest})"),
        )
    }

    /// The `Status` object.
    pub(super) fn status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// The `reason` kube-apiserver gives with an HTTP status code.
pub(super) fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        406 => "NotAcceptable",
        409 => "Conflict",
        410 => "Expired",
        413 => "RequestEntityTooLarge",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "Unknown",
    }
}

/// Every object, and the history of their changes.
#[derive(Debug)]
pub(super) struct Store {
    objects: BTreeMap<Key, Value>,
    /// The `kind` of each collection, learnt from the objects written to it (for list kinds).
    kinds: HashMap<Collection, String>,
    resource_version: u64,
    history: VecDeque<Arc<Change>>,
    /// The resourceVersion of the newest event dropped from the history.
    forgotten: u64,
    events: broadcast::Sender<Arc<Change>>,
}

impl Store {
    pub(super) fn new() -> Self {
        Self {
            objects: BTreeMap::new(),
            kinds: HashMap::new(),
            resource_version: 0,
            history: VecDeque::new(),
            forgotten: 0,
            events: broadcast::Sender::new(HISTORY),
        }
    }

    pub(super) fn resource_version(&self) -> u64 {
        self.resource_version
    }

    pub(super) fn kind(&self, collection: &Collection) -> Option<&str> {
        self.kinds.get(collection).map(String::as_str)
    }

    /// Live events from now on. Subscribe under the same lock as reading the history or the
    /// objects, so that nothing falls between them.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.events.subscribe()
    }

    /// The events after `resource_version`, or 410 Gone if some of them were forgotten.
    pub(super) fn history_since(
        &self,
        resource_version: u64,
    ) -> Result<Vec<Arc<Change>>, ApiError> {
        if resource_version < self.forgotten {
            return Err(ApiError::expired(resource_version, self.forgotten + 1));
        }
        Ok(self
            .history
            .iter()
            .filter(|c| c.resource_version > resource_version)
            .cloned()
            .collect())
    }

    /// Forgets the history, as etcd compaction does.
    pub(super) fn compact(&mut self) {
        self.history.clear();
        self.forgotten = self.resource_version;
    }

    /// The objects of `collection`, in `namespace` or in all namespaces, by namespace and name.
    pub(super) fn list<'a>(
        &'a self,
        collection: &'a Collection,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Value> + 'a {
        self.objects
            .iter()
            .filter(move |(k, _)| {
                &k.collection == collection && namespace.is_none_or(|ns| k.namespace == ns)
            })
            .map(|(_, v)| v)
    }

    pub(super) fn get_key(&self, key: &Key) -> Option<&Value> {
        self.objects.get(key)
    }

    pub(super) fn get(&self, path: &ResourcePath) -> Result<Value, ApiError> {
        let key = path.key()?;
        self.objects
            .get(&key)
            .cloned()
            .ok_or_else(|| ApiError::not_found(&key))
    }

    /// POST: creates the object, or fails with 409 AlreadyExists.
    pub(super) fn create(&mut self, path: &ResourcePath, obj: Value) -> Result<Value, ApiError> {
        self.insert_new(path, obj, false)
    }

    fn insert_new(
        &mut self,
        path: &ResourcePath,
        mut obj: Value,
        trusted: bool,
    ) -> Result<Value, ApiError> {
        let namespace = path.namespace.clone().unwrap_or_default();
        self.stamp(&path.collection, path.namespace.as_deref(), &mut obj)?;
        let name = match meta_str(&obj, "name") {
            Some(name) if !name.is_empty() => name.to_owned(),
            _ => match meta_str(&obj, "generateName") {
                Some(prefix) if !prefix.is_empty() => loop {
                    let name = format!("{prefix}{}", random_suffix());
                    let key = Key::new(&path.collection, &namespace, &name);
                    if !self.objects.contains_key(&key) {
                        break name;
                    }
                },
                _ => {
                    return Err(ApiError::new(
                        422,
                        "metadata.name: Required value: name or generateName is required",
                    ));
                }
            },
        };
        let key = Key::new(&path.collection, &namespace, &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&key));
        }
        let meta = metadata(&mut obj)?;
        meta.insert("name".into(), json!(name));
        set_server_fields(meta, None, trusted, false);
        Ok(self.commit(key, None, obj))
    }

    /// PUT: replaces the object unless the body's resourceVersion is set and stale.
    pub(super) fn replace(&mut self, path: &ResourcePath, obj: Value) -> Result<Value, ApiError> {
        let key = path.key()?;
        let old = self.objects.get(&key).cloned();
        let old = old.ok_or_else(|| ApiError::not_found(&key))?;
        if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|rv| !rv.is_empty())
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::modified(&key));
        }
        self.update(path, key, old, obj, false)
    }

    /// PATCH, by content type. The patch may carry a resourceVersion: then it must be current.
    pub(super) fn patch(
        &mut self,
        path: &ResourcePath,
        content_type: &str,
        body: &[u8],
    ) -> Result<Value, ApiError> {
        let key = path.key()?;
        let old = self.objects.get(&key).cloned();
        let old = old.ok_or_else(|| ApiError::not_found(&key))?;
        let mut obj = old.clone();
        let bad = |e: serde_json::Error| ApiError::bad_request(format!("invalid patch: {e}"));
        match content_type.split(';').next().unwrap_or_default().trim() {
            "application/merge-patch+json" => {
                let patch: Value = serde_json::from_slice(body).map_err(bad)?;
                json_patch::merge(&mut obj, &patch);
            }
            "application/strategic-merge-patch+json" => {
                let patch: Value = serde_json::from_slice(body).map_err(bad)?;
                crate::patch::apply(crate::patch::PatchKind::Strategic, &mut obj, &patch)
                    .map_err(|e| ApiError::conflict(&key, &e.0))?;
            }
            "application/json-patch+json" => {
                let patch: json_patch::Patch = serde_json::from_slice(body).map_err(bad)?;
                json_patch::patch(&mut obj, &patch.0)
                    .map_err(|e| ApiError::new(422, e.to_string()))?;
            }
            other => {
                return Err(ApiError::new(
                    415,
                    format!("the fake API server does not support patches of type {other:?}"),
                ));
            }
        }
        if let Some(rv) = meta_str(&obj, "resourceVersion").filter(|rv| !rv.is_empty())
            && Some(rv) != meta_str(&old, "resourceVersion")
        {
            return Err(ApiError::modified(&key));
        }
        self.update(path, key, old, obj, false)
    }

    /// DELETE: marks an object that has finalizers (once), removes one that has none.
    pub(super) fn delete(
        &mut self,
        path: &ResourcePath,
        options: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let key = path.key()?;
        let old = self.objects.get(&key).cloned();
        let old = old.ok_or_else(|| ApiError::not_found(&key))?;
        let preconditions = options.and_then(|o| o.get("preconditions"));
        for (field, label) in [("uid", "UID"), ("resourceVersion", "ResourceVersion")] {
            let wanted = preconditions
                .and_then(|p| p.get(field))
                .and_then(Value::as_str);
            let actual = meta_str(&old, field).unwrap_or_default();
            if let Some(wanted) = wanted
                && wanted != actual
            {
                let why = format!(
                    "Precondition failed: {label} in precondition: {wanted}, {label} in object \
                     meta: {actual}"
                );
                return Err(ApiError::conflict(&key, &why));
            }
        }
        if !has_finalizers(&old) {
            return Ok(self.remove_key(&key).unwrap_or(old));
        }
        if old["metadata"].get("deletionTimestamp").is_some() {
            return Ok(old);
        }
        let mut obj = old.clone();
        let meta = metadata(&mut obj)?;
        meta.insert("deletionTimestamp".into(), json!(now()));
        meta.insert("deletionGracePeriodSeconds".into(), json!(0));
        Ok(self.commit(key, Some(old), obj))
    }

    /// Writes from the test: creates or replaces the object unconditionally. Server fields the
    /// object carries (uid, creationTimestamp, deletionTimestamp, generation) are kept.
    pub(super) fn upsert(
        &mut self,
        collection: &Collection,
        obj: Value,
    ) -> Result<Value, ApiError> {
        let namespace = meta_str(&obj, "namespace").map(str::to_owned);
        let path = ResourcePath {
            collection: collection.clone(),
            namespace,
            name: meta_str(&obj, "name").map(str::to_owned),
            subresource: None,
        };
        let existing = match path.key() {
            Ok(key) => self.objects.get(&key).cloned().map(|old| (key, old)),
            Err(_) => None,
        };
        match existing {
            Some((key, old)) => self.update(&path, key, old, obj, true),
            None => self.insert_new(&path, obj, true),
        }
    }

    /// Removes the object whatever its finalizers, with a DELETED event.
    pub(super) fn remove_key(&mut self, key: &Key) -> Option<Value> {
        let old = self.objects.remove(key)?;
        Some(self.removed(key.clone(), Some(old.clone()), old))
    }

    /// Records the removal of `obj` (already out of the map) with a new resourceVersion.
    fn removed(&mut self, key: Key, old: Option<Value>, mut obj: Value) -> Value {
        self.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        self.emit(EventType::Deleted, key, old, obj.clone());
        obj
    }

    /// PUT and PATCH: stores `obj` in place of `old`, keeping what clients may not change.
    fn update(
        &mut self,
        path: &ResourcePath,
        key: Key,
        old: Value,
        mut obj: Value,
        trusted: bool,
    ) -> Result<Value, ApiError> {
        self.stamp(&path.collection, path.namespace.as_deref(), &mut obj)?;
        match meta_str(&obj, "name") {
            Some(name) if name != key.name => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({name}) does not match the name on the URL ({})",
                    key.name
                )));
            }
            _ => {}
        }
        let spec_changed = without_meta_and_status(&old) != without_meta_and_status(&obj);
        let bump = spec_changed && path.subresource.is_none();
        let meta = metadata(&mut obj)?;
        meta.insert("name".into(), json!(key.name));
        set_server_fields(meta, Some(&old["metadata"]), trusted, bump);
        Ok(self.commit(key, Some(old), obj))
    }

    /// Sets apiVersion, kind and namespace from the path; learns the collection's kind.
    fn stamp(
        &mut self,
        collection: &Collection,
        namespace: Option<&str>,
        obj: &mut Value,
    ) -> Result<(), ApiError> {
        let Some(fields) = obj.as_object_mut() else {
            return Err(ApiError::bad_request("the body must be a JSON object"));
        };
        fields
            .entry("apiVersion")
            .or_insert_with(|| json!(collection.api_version()));
        match fields.get("kind").and_then(Value::as_str) {
            Some(kind) => {
                self.kinds.insert(collection.clone(), kind.to_owned());
            }
            None => {
                if let Some(kind) = self.kinds.get(collection) {
                    fields.insert("kind".into(), json!(kind));
                }
            }
        }
        let meta = metadata(obj)?;
        if let Some(namespace) = namespace {
            match meta.get("namespace").and_then(Value::as_str) {
                Some(ns) if !ns.is_empty() && ns != namespace => {
                    return Err(ApiError::bad_request(format!(
                        "the namespace of the object ({ns}) does not match the namespace on the \
                         request ({namespace})"
                    )));
                }
                _ => {
                    meta.insert("namespace".into(), json!(namespace));
                }
            }
        }
        Ok(())
    }

    /// Stores the object with a new resourceVersion, or removes it if it is being deleted and has
    /// no finalizers left.
    fn commit(&mut self, key: Key, old: Option<Value>, mut obj: Value) -> Value {
        if obj["metadata"].get("deletionTimestamp").is_some() && !has_finalizers(&obj) {
            self.objects.remove(&key);
            return self.removed(key, old, obj);
        }
        self.resource_version += 1;
        obj["metadata"]["resourceVersion"] = json!(self.resource_version.to_string());
        let event = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.objects.insert(key.clone(), obj.clone());
        self.emit(event, key, old, obj.clone());
        obj
    }

    fn emit(&mut self, event: EventType, key: Key, old: Option<Value>, object: Value) {
        let change = Arc::new(Change {
            resource_version: self.resource_version,
            event,
            key,
            old,
            object,
        });
        if self.history.len() >= HISTORY
            && let Some(dropped) = self.history.pop_front()
        {
            self.forgotten = dropped.resource_version;
        }
        self.history.push_back(change.clone());
        // No receiver (no watch) is fine.
        let _ = self.events.send(change);
    }
}

fn metadata(obj: &mut Value) -> Result<&mut Map<String, Value>, ApiError> {
    let Some(fields) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the body must be a JSON object"));
    };
    let meta = fields.entry("metadata").or_insert_with(|| json!({}));
    if meta.is_null() {
        *meta = json!({});
    }
    meta.as_object_mut()
        .ok_or_else(|| ApiError::bad_request("metadata must be a JSON object"))
}

fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn has_finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"]
        .as_array()
        .is_some_and(|f| !f.is_empty())
}

fn without_meta_and_status(obj: &Value) -> Value {
    let mut obj = obj.clone();
    if let Some(fields) = obj.as_object_mut() {
        fields.remove("metadata");
        fields.remove("status");
    }
    obj
}

/// Sets uid, creationTimestamp, deletionTimestamp and generation: from `old` on an update, new on
/// a create. `trusted` (writes from the test) keeps the values the object carries.
fn set_server_fields(
    meta: &mut Map<String, Value>,
    old: Option<&Value>,
    trusted: bool,
    bump_generation: bool,
) {
    let old_field = |field: &str| old.and_then(|m| m.get(field)).filter(|v| !v.is_null());
    for (field, fresh) in [
        ("uid", json!(new_uid())),
        ("creationTimestamp", json!(now())),
    ] {
        if trusted && meta.get(field).is_some_and(|v| !v.is_null()) {
            continue;
        }
        meta.insert(field.into(), old_field(field).cloned().unwrap_or(fresh));
    }
    if !trusted || !meta.contains_key("deletionTimestamp") {
        match old_field("deletionTimestamp") {
            Some(at) => meta.insert("deletionTimestamp".into(), at.clone()),
            None => meta.remove("deletionTimestamp"),
        };
    }
    if !(trusted && meta.get("generation").is_some_and(Value::is_u64)) {
        let generation = match old_field("generation").and_then(Value::as_u64) {
            Some(g) if bump_generation => g + 1,
            Some(g) => g,
            None => 1,
        };
        meta.insert("generation".into(), json!(generation));
    }
    meta.remove("resourceVersion");
}

/// Now, RFC 3339 to the second, as Kubernetes' `Time`.
fn now() -> String {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_second(now.as_second())
        .unwrap_or(now)
        .to_string()
}

/// A random version 4 UUID.
fn new_uid() -> String {
    // Version 4 in bits 76..80, variant 0b10 in bits 62..64.
    let n = rand::random::<u128>() & !(0xf_u128 << 76) & !(0x3_u128 << 62);
    let n = n | (0x4_u128 << 76) | (0x2_u128 << 62);
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

/// Five characters from the apiserver's generateName alphabet.
fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

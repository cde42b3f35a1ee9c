//! A fake Kubernetes API server for component tests (feature `testing`, or `cfg(test)`).
//!
//! [`FakeApiServer`] serves plain HTTP on `127.0.0.1:<random port>`, so that a real
//! [`kube::Client`], kube's `watcher` and reflectors, and so [`crate::Informers`], run against it
//! unchanged. It is generic: objects of any type are stored as JSON, keyed by URL path
//! (`/api/v1/namespaces/<ns>/<plural>/<name>`, `/apis/<group>/<version>/<plural>/<name>`, ...).
//!
//! # What it does
//! - GET, LIST (with equality-based `labelSelector` and dotted-path `fieldSelector`, across
//!   namespaces for cluster-wide paths) and WATCH (events after a `resourceVersion` replayed from
//!   the last 10,000, then live ones; 410 Gone for older versions; the stream ends after
//!   `timeoutSeconds`; `sendInitialEvents` gets the initial state and the end bookmark).
//! - POST, PUT (409 on a stale `resourceVersion`), PATCH (merge, JSON patch) and DELETE (a
//!   deletion timestamp while finalizers remain; removal when the last one goes), with one global
//!   `resourceVersion` counter, `uid`, `creationTimestamp`, `generateName` and `generation`.
//!   `/status` is served as the object itself.
//! - Errors are `Status` objects worded like kube-apiserver's (`pods "x" not found`).
//! - It records every request ([`FakeApiServer::requests`]), fails chosen ones on demand
//!   ([`FakeApiServer::fail_next`]), and lets the test seed and read objects directly.
//!
//! # What it does not do
//! No admission, defaulting, validation, authentication or RBAC; no discovery, no server-side
//! apply (`application/apply-patch+yaml` gets 415); strategic merge patches are applied as
//! [`crate::patch::apply`] does (JSON merge plus `$deleteFromPrimitiveList` and a merged
//! `finalizers` list), so other lists are replaced, never merged by key; no status/spec separation
//! (a write to `/status` may change anything, a write to the object may change its status); no
//! owner-reference garbage collection; no pagination (`limit`/`continue` are ignored); set-based
//! label selectors (`k in (a,b)`) get 400; field selectors work on any field; no watch bookmarks
//! except the initial-events one. Other subresources and `deletecollection` are not served.

mod path;
mod selector;
mod serve;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use kube::Resource;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::task::JoinHandle;

use self::serve::{Fault, Shared};
use self::store::{Key, ResourcePath};

/// A request the fake API server received, and the status code it answered.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The HTTP method, upper case (`GET`, `PATCH`, ...).
    pub method: String,
    /// The path, without the query string.
    pub path: String,
    /// The raw query string (`""` if none).
    pub query: String,
    /// The `Content-Type` header, if any.
    pub content_type: Option<String>,
    /// The body: parsed JSON when it is JSON, else a JSON string of its text; `None` if empty.
    pub body: Option<Value>,
    /// The HTTP status code of the answer.
    pub status: u16,
}

impl Request {
    /// True for GET: reads, lists and watches, which tests usually leave out of their assertions.
    pub fn is_read(&self) -> bool {
        self.method == "GET"
    }

    /// True for a watch (`watch=true` or `watch=1`).
    pub fn is_watch(&self) -> bool {
        matches!(self.param("watch").as_deref(), Some("true" | "1"))
    }

    /// The value of query parameter `name`, decoded.
    pub fn param(&self, name: &str) -> Option<String> {
        let uri: axum::http::Uri = format!("/?{}", self.query).parse().ok()?;
        let axum::extract::Query(params) =
            axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(&uri)
                .ok()?;
        params.get(name).cloned()
    }
}

/// A fake Kubernetes API server on `127.0.0.1`, for one test. It stops when dropped.
pub struct FakeApiServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
        self.task.abort();
    }
}

impl FakeApiServer {
    /// Starts an empty server on a free port of `127.0.0.1`.
    ///
    /// # Panics
    /// If no port can be bound.
    pub async fn start() -> Self {
        let shared = Arc::new(Shared::new());
        let app = axum::Router::new()
            .fallback(serve::handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake API server to 127.0.0.1:0");
        let addr = listener
            .local_addr()
            .expect("the fake API server's local address");
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, app).await {
                tracing::error!(%error, "the fake API server stopped");
            }
        });
        Self { addr, shared, task }
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A client of this server, with default namespace `default`. Call it within a runtime.
    ///
    /// kube's client retries 429, 503 and 504 answers on its own (up to 15 times), so a fault
    /// with one of these codes is seen by the caller only once every retry has failed too.
    ///
    /// # Panics
    /// If kube cannot build a client (it can for a plain-HTTP address).
    pub fn client(&self) -> kube::Client {
        let url = format!("http://{}", self.addr)
            .parse()
            .expect("a socket address makes a valid URL");
        kube::Client::try_from(kube::Config::new(url)).expect("a kube client over plain HTTP")
    }

    /// Every request received so far, in order (including reads, lists and watches).
    pub fn requests(&self) -> Vec<Request> {
        self.shared.lock().requests.clone()
    }

    /// The requests with method `method` (case-insensitive; `"*"` for any) whose path contains
    /// `path` (a suffix such as `/leases/my-lease`, or any part of it).
    pub fn requests_matching(&self, method: &str, path: &str) -> Vec<Request> {
        self.shared
            .lock()
            .requests
            .iter()
            .filter(|r| method == "*" || r.method.eq_ignore_ascii_case(method))
            .filter(|r| r.path.contains(path))
            .cloned()
            .collect()
    }

    /// Forgets the requests recorded so far.
    pub fn clear_requests(&self) {
        self.shared.lock().requests.clear();
    }

    /// Makes the next `times` requests with method `method` (case-insensitive; `"*"` for any)
    /// whose path contains `path_contains` fail with a `Status` of code `status` (reason as the
    /// apiserver gives it: `InternalError` for 500, `Forbidden` for 403, `Conflict` for 409...),
    /// without changing anything. Faults are matched in the order they were armed.
    pub fn fail_next(&self, method: &str, path_contains: &str, times: usize, status: u16) {
        if times == 0 {
            return;
        }
        self.shared.lock().faults.push(Fault {
            method: method.to_owned(),
            path_contains: path_contains.to_owned(),
            remaining: times,
            code: status,
        });
    }

    /// The current (last assigned) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().store.resource_version()
    }

    /// Forgets the event history, as etcd compaction does: watches resuming from any earlier
    /// resourceVersion get 410 Gone and must list again.
    pub fn compact(&self) {
        self.shared.lock().store.compact();
    }

    /// Creates or replaces `obj` unconditionally, as if another client had written it: it gets a
    /// new resourceVersion (and a uid, creationTimestamp and generation if it has none) and
    /// watches see it. Its namespace is its `metadata.namespace`. Returns the stored object.
    ///
    /// Unlike a client's write, the object keeps the `deletionTimestamp` it carries, so a test can
    /// seed an object being deleted (one without finalizers is deleted at once).
    ///
    /// # Panics
    /// If the object does not serialize to a JSON object with a name or generateName.
    pub fn insert<K>(&self, obj: &K) -> K
    where
        K: Resource<DynamicType = ()> + Serialize + DeserializeOwned,
    {
        let path = K::url_path(&(), obj.meta().namespace.as_deref());
        let value = serde_json::to_value(obj).expect("the object serializes to JSON");
        decode(self.put_json(&path, value))
    }

    /// The object `name` of type `K` (`namespace` `None` for cluster-scoped types), if it exists.
    ///
    /// # Panics
    /// If the stored object does not deserialize as `K`.
    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        self.get_json(&format!("{}/{name}", K::url_path(&(), namespace)))
            .map(decode)
    }

    /// Every object of type `K`, in all namespaces, ordered by namespace and name.
    ///
    /// # Panics
    /// If a stored object does not deserialize as `K`.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let Some(path) = ResourcePath::parse(&K::url_path(&(), None)) else {
            return Vec::new();
        };
        let values: Vec<Value> = {
            let inner = self.shared.lock();
            inner.store.list(&path.collection, None).cloned().collect()
        };
        values.into_iter().map(decode).collect()
    }

    /// Removes the object `name` of type `K` at once, finalizers or not (a DELETED event);
    /// returns its last state.
    ///
    /// # Panics
    /// If the stored object does not deserialize as `K`.
    pub fn remove<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: Resource<DynamicType = ()> + DeserializeOwned,
    {
        let path = ResourcePath::parse(&K::url_path(&(), namespace))?;
        let key = Key::new(&path.collection, namespace.unwrap_or_default(), name);
        let removed = self.shared.lock().store.remove_key(&key);
        removed.map(decode)
    }

    /// Untyped [`insert`](Self::insert): creates or replaces `obj` in the collection at
    /// `collection_path` (`/api/v1/namespaces/default/configmaps`, `/apis/example.com/v1/widgets`).
    ///
    /// # Panics
    /// If the path is not a collection path, or `obj` is not a JSON object with a name or
    /// generateName.
    pub fn put_json(&self, collection_path: &str, obj: Value) -> Value {
        let path = ResourcePath::parse(collection_path)
            .filter(|p| p.name.is_none())
            .unwrap_or_else(|| panic!("not a collection path: {collection_path}"));
        let mut obj = obj;
        if let (Some(ns), Some(meta)) = (&path.namespace, obj.get_mut("metadata")) {
            meta["namespace"] = Value::String(ns.clone());
        }
        self.shared
            .lock()
            .store
            .upsert(&path.collection, obj)
            .unwrap_or_else(|e| panic!("cannot store the object: {}", e.status()))
    }

    /// Untyped [`get`](Self::get): the object at `object_path`
    /// (`/api/v1/namespaces/default/configmaps/x`), if it exists.
    pub fn get_json(&self, object_path: &str) -> Option<Value> {
        let path = ResourcePath::parse(object_path)?;
        let name = path.name.as_deref()?;
        let key = Key::new(
            &path.collection,
            path.namespace.as_deref().unwrap_or_default(),
            name,
        );
        self.shared.lock().store.get_key(&key).cloned()
    }
}

fn decode<K: DeserializeOwned>(value: Value) -> K {
    serde_json::from_value(value).unwrap_or_else(|e| {
        panic!(
            "the stored object does not deserialize as {}: {e}",
            std::any::type_name::<K>()
        )
    })
}

//! The HTTP side of the fake API server: one handler for every path, which records the request,
//! applies injected faults, and answers from the [`Store`].

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Request;
use super::selector::Selector;
use super::store::{ApiError, Change, Collection, EventType, ResourcePath, Store};

/// A fault armed by [`super::FakeApiServer::fail_next`].
#[derive(Debug)]
pub(super) struct Fault {
    pub(super) method: String,
    pub(super) path_contains: String,
    pub(super) remaining: usize,
    pub(super) code: u16,
}

/// Everything behind the server's one lock.
#[derive(Debug)]
pub(super) struct Inner {
    pub(super) store: Store,
    pub(super) requests: Vec<Request>,
    pub(super) faults: Vec<Fault>,
}

/// The state shared by the handler and the [`super::FakeApiServer`] handle.
#[derive(Debug)]
pub(super) struct Shared {
    inner: Mutex<Inner>,
    /// Cancelled when the server is dropped: ends open watches.
    pub(super) shutdown: CancellationToken,
}

impl Shared {
    pub(super) fn new() -> Self {
        Self {
            inner: Mutex::new(Inner {
                store: Store::new(),
                requests: Vec::new(),
                faults: Vec::new(),
            }),
            shutdown: CancellationToken::new(),
        }
    }

    pub(super) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().expect("fake API server lock poisoned")
    }
}

/// The one handler: every method, every path.
pub(super) async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut request = Request {
        method: method.as_str().to_owned(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or_default().to_owned(),
        content_type: content_type.clone(),
        body: parse_body(&body),
        status: 0,
    };
    let params: HashMap<String, String> =
        Query::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let mut inner = shared.lock();
    let response = match take_fault(&mut inner.faults, &request) {
        Some(code) => error(&ApiError::new(code, "injected fault")),
        None => route(
            &mut inner.store,
            &request,
            &params,
            content_type.as_deref().unwrap_or_default(),
            &body,
            &shared.shutdown,
        ),
    };
    request.status = response.status().as_u16();
    inner.requests.push(request);
    response
}

fn parse_body(body: &[u8]) -> Option<Value> {
    if body.is_empty() {
        return None;
    }
    Some(
        serde_json::from_slice(body)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into_owned())),
    )
}

/// Consumes one use of the first fault matching `request`; its status code.
fn take_fault(faults: &mut Vec<Fault>, request: &Request) -> Option<u16> {
    let index = faults.iter().position(|f| {
        (f.method == "*" || f.method.eq_ignore_ascii_case(&request.method))
            && request.path.contains(&f.path_contains)
    })?;
    let fault = &mut faults[index];
    fault.remaining -= 1;
    let code = fault.code;
    if fault.remaining == 0 {
        faults.remove(index);
    }
    Some(code)
}

fn error(e: &ApiError) -> Response {
    let code = StatusCode::from_u16(e.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, Json(e.status())).into_response()
}

fn answer(code: StatusCode, result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(obj) => (code, Json(obj)).into_response(),
        Err(e) => error(&e),
    }
}

fn route(
    store: &mut Store,
    request: &Request,
    params: &HashMap<String, String>,
    content_type: &str,
    raw: &[u8],
    shutdown: &CancellationToken,
) -> Response {
    let Some(path) = ResourcePath::parse(&request.path) else {
        return error(&ApiError::new(
            404,
            format!("the fake API server does not serve {}", request.path),
        ));
    };
    if path
        .subresource
        .as_deref()
        .is_some_and(|sub| sub != "status")
    {
        return error(&ApiError::new(
            404,
            format!("the fake API server does not serve {}", request.path),
        ));
    }
    let object_body = || match &request.body {
        Some(body @ Value::Object(_)) => Ok(body.clone()),
        _ => Err(ApiError::bad_request("the body must be a JSON object")),
    };
    match (request.method.as_str(), path.name.is_some()) {
        ("GET", false) => {
            let selector = match Selector::parse(
                params.get("labelSelector").map(String::as_str),
                params.get("fieldSelector").map(String::as_str),
            ) {
                Ok(selector) => selector,
                Err(e) => return error(&e),
            };
            if matches!(params.get("watch").map(String::as_str), Some("true" | "1")) {
                watch(store, &path, params, selector, shutdown)
            } else {
                list(store, &path, &selector)
            }
        }
        ("GET", true) => answer(StatusCode::OK, store.get(&path)),
        ("POST", false) => answer(
            StatusCode::CREATED,
            object_body().and_then(|b| store.create(&path, b)),
        ),
        ("PUT", true) => answer(
            StatusCode::OK,
            object_body().and_then(|b| store.replace(&path, b)),
        ),
        ("PATCH", true) => answer(StatusCode::OK, store.patch(&path, content_type, raw)),
        ("DELETE", true) => answer(StatusCode::OK, store.delete(&path, request.body.as_ref())),
        (method, _) => error(&ApiError::new(
            405,
            format!(
                "the fake API server does not support {method} on {}",
                request.path
            ),
        )),
    }
}

fn list(store: &Store, path: &ResourcePath, selector: &Selector) -> Response {
    let items: Vec<Value> = store
        .list(&path.collection, path.namespace.as_deref())
        .filter(|o| selector.matches(o))
        .cloned()
        .collect();
    let kind = store.kind(&path.collection).unwrap_or_default();
    let list = json!({
        "kind": format!("{kind}List"),
        "apiVersion": path.collection.api_version(),
        "metadata": {"resourceVersion": store.resource_version().to_string()},
        "items": items,
    });
    (StatusCode::OK, Json(list)).into_response()
}

/// Which changes a watch sees.
#[derive(Debug)]
struct Filter {
    collection: Collection,
    namespace: Option<String>,
    selector: Selector,
}

impl Filter {
    fn covers(&self, collection: &Collection, namespace: &str) -> bool {
        &self.collection == collection && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }

    /// The event line a watch sends for `change`, if any. An object that starts to match the
    /// selectors is ADDED, one that stops matching is DELETED, as the apiserver does.
    fn line(&self, change: &Change) -> Option<Bytes> {
        if !self.covers(&change.key.collection, &change.key.namespace) {
            return None;
        }
        let was = change
            .old
            .as_ref()
            .is_some_and(|o| self.selector.matches(o));
        let is = self.selector.matches(&change.object);
        let kind = match (change.event, was, is) {
            (EventType::Deleted, true, _) | (EventType::Deleted, _, true) => "DELETED",
            (EventType::Added, _, true) | (EventType::Modified, false, true) => "ADDED",
            (EventType::Modified, true, true) => "MODIFIED",
            (EventType::Modified, true, false) => "DELETED",
            _ => return None,
        };
        Some(event_line(kind, &change.object))
    }
}

fn event_line(kind: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": kind, "object": object}).to_string();
    line.push('\n');
    Bytes::from(line)
}

/// A streaming watch: replayed (or initial) events, then live ones until `timeoutSeconds`, a
/// lagging receiver (410 Expired) or the server's shutdown.
fn watch(
    store: &Store,
    path: &ResourcePath,
    params: &HashMap<String, String>,
    selector: Selector,
    shutdown: &CancellationToken,
) -> Response {
    let filter = Filter {
        collection: path.collection.clone(),
        namespace: path.namespace.clone(),
        selector,
    };
    let since = match params.get("resourceVersion").map(String::as_str) {
        None | Some("") => 0,
        Some(rv) => match rv.parse::<u64>() {
            Ok(rv) => rv,
            Err(_) => {
                return error(&ApiError::bad_request(format!(
                    "invalid resourceVersion {rv:?}"
                )));
            }
        },
    };
    let initial_events = params.get("sendInitialEvents").map(String::as_str) == Some("true");
    let mut pending = VecDeque::new();
    let mut live = true;
    if since == 0 || initial_events {
        // "Start at any": the current state as ADDED events, then live changes.
        pending.extend(
            store
                .list(&path.collection, path.namespace.as_deref())
                .filter(|o| filter.selector.matches(o))
                .map(|o| event_line("ADDED", o)),
        );
        if initial_events {
            let kind = store.kind(&path.collection).unwrap_or_default();
            let bookmark = json!({
                "kind": kind,
                "apiVersion": path.collection.api_version(),
                "metadata": {
                    "resourceVersion": store.resource_version().to_string(),
                    "annotations": {"k8s.io/initial-events-end": "true"},
                },
            });
            pending.push_back(event_line("BOOKMARK", &bookmark));
        }
    } else {
        match store.history_since(since) {
            Ok(changes) => pending.extend(changes.iter().filter_map(|c| filter.line(c))),
            Err(e) => {
                pending.push_back(event_line("ERROR", &e.status()));
                live = false;
            }
        }
    }
    let timeout = params
        .get("timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .filter(|s| *s > 0)
        .map(|s| Instant::now() + Duration::from_secs(s));
    let state = WatchState {
        pending,
        events: live.then(|| store.subscribe()),
        filter,
        deadline: timeout,
        shutdown: shutdown.clone(),
    };
    let stream = futures::stream::unfold(state, next_event);
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

struct WatchState {
    pending: VecDeque<Bytes>,
    /// `None` once the stream must end after `pending`.
    events: Option<broadcast::Receiver<Arc<Change>>>,
    filter: Filter,
    deadline: Option<Instant>,
    shutdown: CancellationToken,
}

async fn next_event(mut state: WatchState) -> Option<(Result<Bytes, Infallible>, WatchState)> {
    if let Some(line) = state.pending.pop_front() {
        return Some((Ok(line), state));
    }
    let mut events = state.events.take()?;
    loop {
        let received = tokio::select! {
            received = events.recv() => received,
            () = until(state.deadline) => return None,
            () = state.shutdown.cancelled() => return None,
        };
        match received {
            Ok(change) => {
                if let Some(line) = state.filter.line(&change) {
                    state.events = Some(events);
                    return Some((Ok(line), state));
                }
            }
            Err(RecvError::Lagged(_)) => {
                let expired = ApiError::new(410, "the watch fell too far behind");
                return Some((Ok(event_line("ERROR", &expired.status())), state));
            }
            Err(RecvError::Closed) => return None,
        }
    }
}

async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

//! Where the fake API server keeps an object: the collection, namespace and name a URL names.

use super::store::ApiError;

/// One resource type, as its collection path: `/api/v1` + `configmaps`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(super) struct Collection {
    /// `/api/v1` or `/apis/<group>/<version>`.
    pub(super) prefix: String,
    pub(super) plural: String,
}

impl Collection {
    pub(super) fn group(&self) -> &str {
        match self.prefix.strip_prefix("/apis/") {
            Some(rest) => rest.split('/').next().unwrap_or_default(),
            None => "",
        }
    }

    /// `v1` or `<group>/<version>`.
    pub(super) fn api_version(&self) -> String {
        let rest = self.prefix.trim_start_matches('/');
        let rest = rest
            .strip_prefix("apis/")
            .or_else(|| rest.strip_prefix("api/"))
            .unwrap_or(rest);
        rest.to_owned()
    }

    /// The resource as the apiserver names it in messages: `pods`, `leases.coordination.k8s.io`.
    pub(super) fn qualified(&self) -> String {
        match self.group() {
            "" => self.plural.clone(),
            group => format!("{}.{group}", self.plural),
        }
    }
}

/// A request path, split into its parts.
#[derive(Clone, Debug)]
pub(super) struct ResourcePath {
    pub(super) collection: Collection,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) subresource: Option<String>,
}

impl ResourcePath {
    /// Parses `/api/v1/...` and `/apis/<group>/<version>/...` paths, namespaced
    /// (`namespaces/<ns>/<plural>[/<name>[/<sub>]]`) or not (`<plural>[/<name>[/<sub>]]`).
    pub(super) fn parse(path: &str) -> Option<Self> {
        let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
        let (prefix, rest) = match segments.as_slice() {
            ["api", version, rest @ ..] => (format!("/api/{version}"), rest),
            ["apis", group, version, rest @ ..] => (format!("/apis/{group}/{version}"), rest),
            _ => return None,
        };
        // `namespaces/<ns>/status` and `namespaces/<ns>/finalize` are subresources of namespaces.
        let (namespace, rest) = match rest {
            ["namespaces", ns, plural, ..] if !matches!(*plural, "status" | "finalize") => {
                (Some((*ns).to_owned()), &rest[2..])
            }
            _ => (None, rest),
        };
        let (plural, name, subresource) = match rest {
            [plural] => (plural, None, None),
            [plural, name] => (plural, Some(name), None),
            [plural, name, sub] => (plural, Some(name), Some(sub)),
            _ => return None,
        };
        Some(Self {
            collection: Collection {
                prefix,
                plural: (*plural).to_owned(),
            },
            namespace,
            name: name.map(|n| (*n).to_owned()),
            subresource: subresource.map(|s| (*s).to_owned()),
        })
    }

    pub(super) fn key(&self) -> Result<Key, ApiError> {
        let name = self
            .name
            .clone()
            .ok_or_else(|| ApiError::bad_request("a name is required"))?;
        Ok(Key::new(
            &self.collection,
            self.namespace.as_deref().unwrap_or_default(),
            &name,
        ))
    }
}

/// Where an object is stored: its collection, namespace (`""` if cluster-scoped) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Key {
    pub(super) collection: Collection,
    pub(super) namespace: String,
    pub(super) name: String,
}

impl Key {
    pub(super) fn new(collection: &Collection, namespace: &str, name: &str) -> Self {
        Self {
            collection: collection.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }
}

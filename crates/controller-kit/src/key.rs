//! Typed queue keys: an object's namespace and name as a value, never a `"ns/name"` string that
//! has to be parsed back.

use std::fmt;

/// A namespaced object's key; printed `namespace/name` as client-go's keys.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NamespacedName {
    /// The namespace.
    pub namespace: String,
    /// The name.
    pub name: String,
}

impl NamespacedName {
    /// The key of `name` in `namespace`.
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// The key of an object, if it has a namespace and a name.
    pub fn of(meta: &kube::api::ObjectMeta) -> Option<Self> {
        Some(Self::new(meta.namespace.clone()?, meta.name.clone()?))
    }

    /// The cache reference of this key for a namespaced type.
    pub fn object_ref<K>(&self) -> kube::runtime::reflector::ObjectRef<K>
    where
        K: kube::Resource,
        K::DynamicType: Default,
    {
        kube::runtime::reflector::ObjectRef::new(&self.name).within(&self.namespace)
    }
}

impl fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prints_as_client_go_keys_and_needs_both_parts() {
        let k = NamespacedName::new("ns", "claim");
        assert_eq!(k.to_string(), "ns/claim");
        let meta = kube::api::ObjectMeta {
            name: Some("claim".into()),
            ..Default::default()
        };
        assert_eq!(NamespacedName::of(&meta), None);
        let meta = kube::api::ObjectMeta {
            namespace: Some("ns".into()),
            ..meta
        };
        assert_eq!(NamespacedName::of(&meta), Some(k));
    }
}

//! Objects a controller has just written, served in place of the cache's older copy until the
//! watch delivers the write (client-go controllers call `store.Update(returned)` for this).
//!
//! Without it, a pass that runs between a write and its watch event reads the state before the
//! write: it repeats work, or sends a patch with a stale resourceVersion that fails with a
//! conflict.
//!
//! # Invariants
//! - The written copy is served only while the cache holds a version it superseded: the same
//!   resourceVersion as before one of its writes, or, where resourceVersions are numbers (etcd's
//!   revisions, as kube-apiserver serves them), a smaller one (a change by someone else that the
//!   write already includes). Any other cached version (the write itself, or a later change by
//!   anyone) wins, and the entry is dropped.
//! - Entries are forgotten after a minute even if never read again.

use std::sync::Arc;
use std::time::Duration;

use kube::Resource;

use crate::expiring::Expiring;

const MEMORY: Duration = Duration::from_secs(60);

/// What a controller wrote last, per object key (see the module docs).
pub struct Written<K> {
    /// key → (resourceVersions the write superseded, the object the API server returned).
    map: Expiring<String, (Vec<String>, Arc<K>)>,
}

impl<K> std::fmt::Debug for Written<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Written")
            .field("entries", &self.map.len())
            .finish()
    }
}

impl<K> Default for Written<K> {
    fn default() -> Self {
        Self {
            map: Expiring::new(MEMORY),
        }
    }
}

impl<K: Resource> Written<K> {
    /// Records that `before` was replaced by `returned` (the API server's answer to the write).
    pub fn record(&self, key: &str, before: &K, returned: K) {
        let mut superseded = self.map.get(key).map(|(s, _)| s).unwrap_or_default();
        if let Some(rv) = before.meta().resource_version.clone() {
            superseded.push(rv);
        }
        self.map
            .insert(key.to_string(), (superseded, Arc::new(returned)));
    }

    /// The freshest copy of `key`: the written one while `cached` is a version it superseded,
    /// else `cached`.
    pub fn read(&self, key: &str, cached: Option<Arc<K>>) -> Option<Arc<K>> {
        let Some((superseded, written)) = self.map.get(key) else {
            return cached;
        };
        let cached_rv = cached
            .as_ref()
            .and_then(|c| c.meta().resource_version.clone());
        let older = |rv: &str| {
            let written_rv = written.meta().resource_version.as_deref();
            match (rv.parse::<u64>(), written_rv.map(str::parse::<u64>)) {
                (Ok(cached), Some(Ok(mine))) => cached < mine,
                _ => false,
            }
        };
        match cached_rv {
            Some(rv) if superseded.contains(&rv) || older(&rv) => Some(written),
            _ => {
                self.map.remove(key);
                cached
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn cm(rv: &str, value: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some("a".into()),
                resource_version: Some(rv.into()),
                ..Default::default()
            },
            data: Some([("v".to_string(), value.to_string())].into()),
            ..Default::default()
        }
    }

    fn value(c: &Option<Arc<ConfigMap>>) -> &str {
        c.as_ref().unwrap().data.as_ref().unwrap()["v"].as_str()
    }

    #[test]
    fn the_written_copy_is_served_until_the_cache_moves_on() {
        let w = Written::default();
        let old = cm("1", "old");
        w.record("a", &old, cm("2", "mine"));
        // The cache still holds version 1: ours is newer.
        assert_eq!(value(&w.read("a", Some(Arc::new(old.clone())))), "mine");
        // A second write in the same pass: both versions it superseded are known.
        w.record("a", &cm("2", "mine"), cm("3", "mine again"));
        assert_eq!(value(&w.read("a", Some(Arc::new(old)))), "mine again");
        // The watch caught up (or someone else wrote): the cache wins, and the entry goes.
        assert_eq!(
            value(&w.read("a", Some(Arc::new(cm("4", "theirs"))))),
            "theirs"
        );
        assert_eq!(value(&w.read("a", Some(Arc::new(cm("1", "old"))))), "old");
    }

    #[test]
    fn a_cached_change_older_than_the_write_does_not_win() {
        let w = Written::default();
        // Someone else wrote version 2 after we read 1; our write (3) includes it.
        w.record("a", &cm("1", "old"), cm("3", "mine"));
        assert_eq!(
            value(&w.read("a", Some(Arc::new(cm("2", "theirs"))))),
            "mine"
        );
        assert_eq!(
            value(&w.read("a", Some(Arc::new(cm("5", "later"))))),
            "later"
        );
    }

    #[test]
    fn a_deleted_object_is_not_brought_back() {
        let w = Written::default();
        w.record("a", &cm("1", "old"), cm("2", "mine"));
        assert!(w.read("a", None).is_none());
    }
}

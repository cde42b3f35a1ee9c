//! A small map whose entries are forgotten a fixed time after they were written: what a controller
//! remembers of its own recent actions (a deletion done, a PV created, a claim held back) without
//! growing with every object it ever saw.
//!
//! # Invariants
//! - [`Expiring::get`] never returns an entry older than the map's time to live.
//! - Expired entries are dropped on every write, so the map holds at most the keys written within
//!   one time to live.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A map of recent facts (see the module docs).
#[derive(Debug)]
pub struct Expiring<K, V> {
    ttl: Duration,
    map: Mutex<HashMap<K, (Instant, V)>>,
}

impl<K: Hash + Eq, V: Clone> Expiring<K, V> {
    /// A map whose entries live `ttl` after their last write.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// Writes `key`, stamped now; drops the expired entries.
    pub fn insert(&self, key: K, value: V) {
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, (at, _)| at.elapsed() < self.ttl);
        map.insert(key, (Instant::now(), value));
    }

    /// The value of `key`, if written within the time to live.
    pub fn get<Q>(&self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Forgets `key`.
    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    /// How many entries are held (expired ones included until the next write).
    pub fn len(&self) -> usize {
        self.map.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn entries_expire_and_are_dropped_on_write() {
        let m = Expiring::<String, u32>::new(Duration::from_secs(10));
        m.insert("a".into(), 1);
        tokio::time::advance(Duration::from_secs(6)).await;
        m.insert("b".into(), 2);
        assert_eq!(m.get("a"), Some(1));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(m.get("a"), None, "older than the time to live");
        assert_eq!(m.get("b"), Some(2));
        m.insert("c".into(), 3);
        assert_eq!(m.len(), 2, "the expired entry was dropped on write");
        m.remove("b");
        assert_eq!(m.get("b"), None);
    }
}

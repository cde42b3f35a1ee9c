//! Per-key async locks, for work that must never run twice at once for one key across queues
//! (the provisioner's create and delete of one volume name; the attacher's attach and detach
//! lanes of one VolumeAttachment).
//!
//! # Invariants
//! - A key is held by at most one guard at a time; the guard releases it when dropped, also when
//!   the future holding it is cancelled.
//! - The map follows the keys in use: idle entries are dropped on the next lock, so memory does not
//!   grow with every key ever seen.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Per-key async locks (see the module docs).
#[derive(Debug)]
pub struct KeyLocks<K> {
    locks: Mutex<HashMap<K, Arc<tokio::sync::Mutex<()>>>>,
}

impl<K> Default for KeyLocks<K> {
    fn default() -> Self {
        Self {
            locks: Mutex::new(HashMap::new()),
        }
    }
}

/// Holds a key until dropped.
pub type KeyGuard = OwnedMutexGuard<()>;

impl<K: Hash + Eq> KeyLocks<K> {
    fn entry<Q>(&self, key: &Q) -> Arc<tokio::sync::Mutex<()>>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        let mut locks = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // Drop idle entries so the map follows the keys in flight, not all keys ever seen.
        locks.retain(|_, l| Arc::strong_count(l) > 1);
        match locks.get(key) {
            Some(l) => l.clone(),
            None => locks.entry(key.to_owned()).or_default().clone(),
        }
    }

    /// Waits until `key` is free, then holds it until the guard is dropped.
    pub async fn lock<Q>(&self, key: &Q) -> KeyGuard
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.entry(key).lock_owned().await
    }

    /// Holds `key` if it is free now; `None` while someone else holds it.
    pub fn try_lock<Q>(&self, key: &Q) -> Option<KeyGuard>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ToOwned<Owned = K> + ?Sized,
    {
        self.entry(key).try_lock_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn one_key_is_serialised_and_others_are_not() {
        let locks = KeyLocks::<String>::default();
        let a = locks.lock("a").await;
        // Another key is free.
        let b = tokio::time::timeout(Duration::from_millis(50), locks.lock("b")).await;
        assert!(b.is_ok());
        // The same key waits.
        let again = tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await;
        assert!(again.is_err(), "a second holder of the same key must wait");
        assert!(locks.try_lock("a").is_none());
        drop(a);
        let again = tokio::time::timeout(Duration::from_millis(50), locks.lock("a")).await;
        assert!(again.is_ok());
    }

    #[tokio::test]
    async fn idle_entries_are_dropped() {
        let locks = KeyLocks::<u32>::default();
        for k in 0..100 {
            drop(locks.try_lock(&k).expect("free"));
        }
        let _held = locks.try_lock(&1000).expect("free");
        assert_eq!(locks.locks.lock().unwrap().len(), 1);
    }
}

//! The parameters a class hands the driver: every key under the sidecars' reserved prefix
//! `csi.storage.k8s.io/` removed, each of which must be one the controller knows (its secrets,
//! say), as the sidecars' `removePrefixedParameters` / `RemovePrefixedParameters` do.

use std::collections::BTreeMap;

/// The reserved prefix of class parameters.
pub const RESERVED_PREFIX: &str = "csi.storage.k8s.io/";

/// `params` without the reserved keys; a reserved key not in `known` is an error, in the
/// sidecars' words.
pub fn strip_reserved(
    params: &BTreeMap<String, String>,
    known: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for (k, v) in params {
        if k.starts_with(RESERVED_PREFIX) {
            if !known.contains(&k.as_str()) {
                return Err(format!(
                    "found unknown parameter key \"{k}\" with reserved namespace {RESERVED_PREFIX}"
                ));
            }
        } else {
            out.insert(k.clone(), v.clone());
        }
    }
    Ok(out)
}

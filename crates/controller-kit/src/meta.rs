//! Reading object metadata the same way for every kind and every controller.

use kube::api::ObjectMeta;

/// The value of annotation `key`, if set.
pub fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(key))
        .map(String::as_str)
}

/// Whether the object carries finalizer `f`.
pub fn has_finalizer(meta: &ObjectMeta, f: &str) -> bool {
    meta.finalizers
        .as_ref()
        .is_some_and(|fs| fs.iter().any(|x| x == f))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_annotations_and_finalizers() {
        let meta = ObjectMeta {
            annotations: Some([("a".to_string(), "1".to_string())].into()),
            finalizers: Some(vec!["f".into()]),
            ..Default::default()
        };
        assert_eq!(annotation(&meta, "a"), Some("1"));
        assert_eq!(annotation(&meta, "b"), None);
        assert!(has_finalizer(&meta, "f"));
        assert!(!has_finalizer(&meta, "g"));
        assert!(!has_finalizer(&ObjectMeta::default(), "f"));
    }
}

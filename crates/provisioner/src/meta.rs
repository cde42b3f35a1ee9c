//! Reading object metadata: annotations and finalizers, the same way for every kind.

pub use runtime::meta::{annotation, has_finalizer};

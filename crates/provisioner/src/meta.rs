//! Reading object metadata: annotations and finalizers, the same way for every kind.

pub use controller_kit::meta::{annotation, has_finalizer};

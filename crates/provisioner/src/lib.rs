//! The provisioner controller: a drop-in for kubernetes-csi/external-provisioner v6.3.
//!
//! It provisions a volume (CreateVolume, then a PV bound to the claim) for every PVC whose
//! StorageClass names this driver, and deletes the volume (DeleteVolume, then the PV) of every
//! Released PV with the Delete policy. On top of upstream it never leaks a volume: intent is
//! recorded in a per-driver journal before CreateVolume and resolved after any restart (see `README.md`).
//!
//! Layout, per the project's observe → plan → act rule:
//! - pure planning: [`claim`] (selection, naming), [`params`] (fsType, parameter stripping, secret
//!   templates), [`topology`], [`request`] (the CreateVolume request and the [`request::Intent`]),
//!   [`pv`] (the PV, the volume worker's plan, deletion secrets), [`intent`] (the no-leak state
//!   machine), [`source`] (data sources), [`error`] (states and messages);
//! - [`controller`]: informers, queues, and the thin act layer over the API and the driver;
//! - [`access`]: the API permissions it uses, checked at start-up.

pub mod access;
pub mod api;
pub mod capacity;
pub mod claim;
pub mod constants;
pub mod controller;
pub mod error;
pub mod intent;
pub mod journal;
pub mod meta;
pub mod metrics;
pub mod node;
pub mod params;
pub mod patch;
pub mod pv;
pub mod request;
pub mod source;
pub mod topology;

pub use capacity::CapacityHandle;
pub use controller::build;
pub use error::{Error, ProvisionError, ProvisioningState};
pub use request::{DriverCaps, Intent, ProvisionerConfig};

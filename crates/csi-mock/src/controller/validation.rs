//! Checks shared by the controller RPCs: required fields, name length, the structure of a
//! volume capability, enabled capabilities and services, required secrets.
//!
//! Each failure is the status the spec's error tables ask for: INVALID_ARGUMENT for a malformed
//! request, UNIMPLEMENTED for a disabled capability or service, UNAUTHENTICATED for missing
//! secrets.

use std::collections::HashMap;

use csi::v1 as pb;
use csi::v1::volume_capability::access_mode::Mode;
use tonic::Status;

use super::Backend;
use crate::config::{ControllerCapability as Cap, MockConfig};
use crate::state::AccessType;

/// Longest name or id the spec allows (128 bytes for strings).
pub(super) const MAX_NAME_BYTES: usize = 128;

pub(crate) fn invalid(message: impl Into<String>) -> Status {
    Status::invalid_argument(message)
}

pub(super) fn require(ok: bool, what: &str) -> Result<(), Status> {
    if ok {
        Ok(())
    } else {
        Err(invalid(format!("{what} is required")))
    }
}

/// A volume capability after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CheckedCapability {
    pub mode: Mode,
    pub access_type: AccessType,
    pub fs_type: String,
    pub mount_flags: Vec<String>,
}

/// Validates the structure of a capability: an access type and a known access mode, and the
/// SINGLE_NODE_*_WRITER modes only when SINGLE_NODE_MULTI_WRITER is advertised.
pub(crate) fn check_capability(
    config: &MockConfig,
    cap: &pb::VolumeCapability,
) -> Result<CheckedCapability, Status> {
    let (access_type, fs_type, mount_flags) = match &cap.access_type {
        Some(pb::volume_capability::AccessType::Block(_)) => {
            (AccessType::Block, String::new(), Vec::new())
        }
        Some(pb::volume_capability::AccessType::Mount(m)) => {
            (AccessType::Mount, m.fs_type.clone(), m.mount_flags.clone())
        }
        None => return Err(invalid("volume capability access_type is required")),
    };
    let mode = cap
        .access_mode
        .as_ref()
        .and_then(|m| Mode::try_from(m.mode).ok())
        .filter(|m| *m != Mode::Unknown)
        .ok_or_else(|| invalid("volume capability access_mode is required"))?;
    if matches!(
        mode,
        Mode::SingleNodeSingleWriter | Mode::SingleNodeMultiWriter
    ) && !config.has(Cap::SingleNodeMultiWriter)
    {
        return Err(invalid(format!(
            "access mode {} needs the SINGLE_NODE_MULTI_WRITER capability",
            mode.as_str_name()
        )));
    }
    Ok(CheckedCapability {
        mode,
        access_type,
        fs_type,
        mount_flags,
    })
}

impl Backend<'_> {
    pub(super) fn require_cap(&self, cap: Cap) -> Result<(), Status> {
        if self.config.has(cap) {
            Ok(())
        } else {
            Err(Status::unimplemented(format!(
                "the {} controller capability is disabled",
                cap.as_str_name()
            )))
        }
    }

    pub(super) fn require_group(&self) -> Result<(), Status> {
        if self.config.group_controller {
            Ok(())
        } else {
            Err(Status::unimplemented(
                "the GroupController service is disabled",
            ))
        }
    }

    /// UNAUTHENTICATED unless `secrets` holds every [`MockConfig::required_secrets`] entry.
    /// The message names the missing keys, never a value.
    pub(super) fn require_secrets(&self, secrets: &HashMap<String, String>) -> Result<(), Status> {
        let missing: Vec<&String> = self
            .config
            .required_secrets
            .iter()
            .filter(|(k, v)| secrets.get(*k) != Some(*v))
            .map(|(k, _)| k)
            .collect();
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Status::unauthenticated(format!(
                "missing or wrong secrets: {missing:?}"
            )))
        }
    }

    /// [`Self::require_secrets`] for the calls beyond CreateVolume and DeleteVolume, when
    /// [`MockConfig::secrets_on_every_call`] is set.
    pub(super) fn require_secrets_on_call(
        &self,
        secrets: &HashMap<String, String>,
    ) -> Result<(), Status> {
        if self.config.secrets_on_every_call {
            self.require_secrets(secrets)
        } else {
            Ok(())
        }
    }
}

//! The two CSI calls and the mapping of their outcomes, kept apart from the API so that they can
//! be tested against csi-mock over a real socket.
//!
//! Messages are Go's `err.Error()` of a gRPC status (`rpc error: code = X desc = Y`), without
//! our client's method prefix, because they land verbatim in `attachError.message`; a local
//! timeout reads as grpc-go's (`code = DeadlineExceeded desc = context deadline exceeded`).

use std::collections::BTreeMap;

use csi::{CsiClient, CsiError, v1};

/// A failed CSI call, as saved in the VA status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CallError {
    /// `status.attachError.message` / `detachError.message`.
    pub message: String,
    /// The numeric gRPC code, for `attachError.errorCode` (upstream sets it for every gRPC
    /// status error since v4.10 with `MutableCSINodeAllocatableCount`, on by default).
    pub code: Option<i32>,
    /// The driver answered NOT_FOUND.
    pub not_found: bool,
}

/// Maps a [`CsiError`] to what upstream saves.
pub fn call_error(e: &CsiError) -> CallError {
    match e {
        CsiError::Status { .. } | CsiError::Timeout { .. } => CallError {
            message: e.go_message(),
            code: e.code().map(|c| c as i32),
            not_found: e.code() == Some(csi::Code::NotFound),
        },
        other => CallError {
            message: other.to_string(),
            code: None,
            not_found: false,
        },
    }
}

/// ControllerPublishVolume; on success the publish context, sorted.
pub async fn publish(
    csi: &CsiClient,
    request: v1::ControllerPublishVolumeRequest,
) -> Result<BTreeMap<String, String>, CallError> {
    match csi.controller_publish_volume(request).await {
        Ok(resp) => Ok(resp.publish_context.into_iter().collect()),
        Err(e) => Err(call_error(&e)),
    }
}

/// How an unpublish ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unpublished {
    /// The driver said OK.
    Ok,
    /// The Node object is gone and the driver answered NOT_FOUND: there is nothing the volume
    /// can still be attached to (beyond upstream, which retries this forever).
    NodeGone,
}

/// ControllerUnpublishVolume. NOT_FOUND is an error (as upstream) unless `node_gone`.
pub async fn unpublish(
    csi: &CsiClient,
    request: v1::ControllerUnpublishVolumeRequest,
    node_gone: bool,
) -> Result<Unpublished, CallError> {
    match csi.controller_unpublish_volume(request).await {
        Ok(_) => Ok(Unpublished::Ok),
        Err(e) => {
            let error = call_error(&e);
            if node_gone && error.not_found {
                Ok(Unpublished::NodeGone)
            } else {
                Err(error)
            }
        }
    }
}

#[cfg(test)]
mod tests;

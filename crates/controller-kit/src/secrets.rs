//! A Secret's data as the strings a CSI request carries, one way for every controller.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;

/// The data of `secret` as strings. A value that is not UTF-8 is an error naming the Secret and
/// the key, never altered: a lossy conversion would hand the driver a wrong credential, and a
/// CSI request (protobuf `map<string, string>`) cannot carry raw bytes.
pub fn csi_strings(secret: Secret) -> Result<BTreeMap<String, String>, String> {
    let name = secret.metadata.name.unwrap_or_default();
    let namespace = secret.metadata.namespace.unwrap_or_default();
    secret
        .data
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| match String::from_utf8(v.0) {
            Ok(s) => Ok((k, s)),
            Err(_) => Err(format!(
                "secret {name} in namespace {namespace}: the value of {k:?} is not UTF-8 text, which a CSI request cannot carry"
            )),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use kube::api::ObjectMeta;

    fn secret(value: Vec<u8>) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some("s".into()),
                namespace: Some("ns".into()),
                ..Default::default()
            },
            data: Some(BTreeMap::from([("k".to_string(), ByteString(value))])),
            ..Default::default()
        }
    }

    #[test]
    fn text_passes_and_bytes_are_refused() {
        assert_eq!(
            csi_strings(secret(b"pw".to_vec())),
            Ok(BTreeMap::from([("k".to_string(), "pw".to_string())]))
        );
        assert_eq!(
            csi_strings(secret(vec![0xff])),
            Err("secret s in namespace ns: the value of \"k\" is not UTF-8 text, which a CSI request cannot carry".to_string())
        );
    }
}

//! Parsing of the `--csi-address` value: `unix:///path`, a bare path, or `tcp://host:port`.

use std::fmt;
use std::path::PathBuf;

use crate::error::CsiError;

/// Where the CSI driver listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CsiEndpoint {
    /// A Unix domain socket, the usual case: the driver and we share an `emptyDir`.
    Unix(PathBuf),
    /// A TCP address (`host:port`), for drivers that run elsewhere and for tests.
    Tcp(String),
}

impl CsiEndpoint {
    /// Parses `unix:///path`, `unix://relative`, a bare path, or `tcp://host:port`.
    pub fn parse(address: &str) -> Result<Self, CsiError> {
        let invalid = |why: &str| CsiError::InvalidEndpoint {
            address: address.to_string(),
            reason: why.to_string(),
        };
        if let Some(path) = address.strip_prefix("unix://") {
            if path.is_empty() {
                return Err(invalid("the socket path is empty"));
            }
            return Ok(Self::Unix(PathBuf::from(path)));
        }
        if let Some(hostport) = address.strip_prefix("tcp://") {
            let (host, port) = hostport
                .rsplit_once(':')
                .ok_or_else(|| invalid("expected tcp://host:port"))?;
            if host.is_empty() || port.parse::<u16>().is_err() {
                return Err(invalid("expected tcp://host:port with a numeric port"));
            }
            return Ok(Self::Tcp(hostport.to_string()));
        }
        if address.contains("://") {
            return Err(invalid("only unix:// and tcp:// endpoints are supported"));
        }
        if address.is_empty() {
            return Err(invalid("the address is empty"));
        }
        Ok(Self::Unix(PathBuf::from(address)))
    }
}

impl fmt::Display for CsiEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
            Self::Tcp(hostport) => write!(f, "tcp://{hostport}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_upstream_forms() {
        let cases = [
            (
                "unix:///csi/csi.sock",
                Some(CsiEndpoint::Unix("/csi/csi.sock".into())),
            ),
            (
                "/csi/csi.sock",
                Some(CsiEndpoint::Unix("/csi/csi.sock".into())),
            ),
            ("csi.sock", Some(CsiEndpoint::Unix("csi.sock".into()))),
            (
                "tcp://127.0.0.1:10000",
                Some(CsiEndpoint::Tcp("127.0.0.1:10000".into())),
            ),
            (
                "tcp://[::1]:10000",
                Some(CsiEndpoint::Tcp("[::1]:10000".into())),
            ),
            ("tcp://host", None),
            ("tcp://:80", None),
            ("tcp://host:http", None),
            ("unix://", None),
            ("http://x", None),
            ("", None),
        ];
        for (input, want) in cases {
            assert_eq!(CsiEndpoint::parse(input).ok(), want, "{input}");
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["unix:///a/b.sock", "tcp://127.0.0.1:9"] {
            assert_eq!(CsiEndpoint::parse(s).unwrap().to_string(), s);
        }
    }
}

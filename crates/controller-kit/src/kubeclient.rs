//! API clients: for the controllers, clients that share the client-side budget of
//! `--kube-api-qps` and `--kube-api-burst` and take turns when it runs short (one per controller,
//! [`turns`]), and one for leader election with no budget, so that a busy controller can never
//! delay a lease renewal.

use std::path::Path;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

mod token_bucket;
mod turns;

/// The User-Agent of the controllers' client.
pub const USER_AGENT: &str = concat!("csi-controller-manager/", env!("CARGO_PKG_VERSION"));
/// The User-Agent of the leader-election client.
pub const ELECTION_USER_AGENT: &str = concat!(
    "csi-controller-manager/",
    env!("CARGO_PKG_VERSION"),
    " leader-election"
);

/// Why an API client could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig could not be read.
    #[error("cannot read kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: String,
        /// What went wrong.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// Neither a kubeconfig nor the in-cluster environment gave a configuration.
    #[error("no Kubernetes configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("cannot build a Kubernetes client: {0}")]
    Build(#[from] kube::Error),
    /// `--master` is not a URL.
    #[error("invalid --master: {0}")]
    Master(String),
    /// The budget flags are invalid.
    #[error("--kube-api-qps and --kube-api-burst must be positive")]
    Budget,
}

/// The process's API clients.
#[derive(Clone)]
pub struct Clients {
    /// For informers and start-up calls: on the shared budget.
    pub main: Client,
    /// For leader election only: not rate-limited.
    pub election: Client,
    config: Config,
    budget: turns::Budget,
}

impl Clients {
    /// A client of its own on the shared budget (a controller's), taking turns with the others
    /// when the budget runs short.
    pub fn taking_turns(&self) -> Result<Client, ClientError> {
        Ok(kube::client::ClientBuilder::try_from(self.config.clone())?
            .with_layer(&self.budget.layer())
            .build())
    }
}

impl std::fmt::Debug for Clients {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clients").finish_non_exhaustive()
    }
}

/// Where the API server and credentials come from: `kubeconfig`, else in-cluster, else the
/// default kubeconfig; `master` (the sidecars' `--master`) replaces the server URL.
#[derive(Clone, Copy, Debug, Default)]
pub struct Source<'a> {
    /// `--kubeconfig`.
    pub kubeconfig: Option<&'a Path>,
    /// `--master`.
    pub master: Option<&'a str>,
}

impl<'a> From<Option<&'a Path>> for Source<'a> {
    fn from(kubeconfig: Option<&'a Path>) -> Self {
        Self {
            kubeconfig,
            master: None,
        }
    }
}

/// Loads the configuration ([`Source`]) and builds the clients. `qps`/`burst` allow `burst`
/// requests at once and `qps` per second sustained.
pub async fn clients(
    source: impl Into<Source<'_>>,
    qps: f32,
    burst: u32,
) -> Result<Clients, ClientError> {
    check_budget(qps, burst)?;
    let config = load_config(source.into()).await?;
    let mut election_config = config.clone();
    election_config
        .headers
        .retain(|(name, _)| name != http::header::USER_AGENT);
    election_config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(ELECTION_USER_AGENT),
    ));
    let election = Client::try_from(election_config)?;
    let budget = turns::Budget::new(qps, burst);
    let main = kube::client::ClientBuilder::try_from(config.clone())?
        .with_layer(&budget.layer())
        .build();
    Ok(Clients {
        main,
        election,
        config,
        budget,
    })
}

/// One more rate-limited client with a budget of its own (e.g. the provisioner's
/// CSIStorageCapacity writes, `--kube-api-capacity-qps`/`-burst`).
pub async fn client_with_budget(
    source: impl Into<Source<'_>>,
    qps: f32,
    burst: u32,
) -> Result<Client, ClientError> {
    check_budget(qps, burst)?;
    rate_limited(load_config(source.into()).await?, qps, burst)
}

fn check_budget(qps: f32, burst: u32) -> Result<(), ClientError> {
    if qps.is_nan() || qps <= 0.0 || burst == 0 {
        return Err(ClientError::Budget);
    }
    Ok(())
}

async fn load_config(source: Source<'_>) -> Result<Config, ClientError> {
    let mut config = match source.kubeconfig {
        Some(path) => {
            let kc = Kubeconfig::read_from(path).map_err(|source| ClientError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
            Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => Config::infer().await?,
    };
    if let Some(master) = source.master.filter(|m| !m.is_empty()) {
        config.cluster_url = master
            .parse()
            .map_err(|e| ClientError::Master(format!("{master}: {e}")))?;
    }
    // Our own User-Agent, so that audit logs and apiserver metrics name the component.
    config.headers.push((
        http::header::USER_AGENT,
        http::HeaderValue::from_static(USER_AGENT),
    ));
    Ok(config)
}

/// client-go's token bucket: `burst` requests at once, `qps` a second sustained
/// ([`token_bucket`]), for this client alone (a budget of one client, [`turns`]).
fn rate_limited(config: Config, qps: f32, burst: u32) -> Result<Client, ClientError> {
    Ok(kube::client::ClientBuilder::try_from(config)?
        .with_layer(&turns::Budget::new(qps, burst).layer())
        .build())
}

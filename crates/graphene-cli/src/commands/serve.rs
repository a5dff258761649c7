use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use graphene_gateway::{Gateway, GatewayConfig};
use graphene_local::{LocalConfig, LocalProvider};

use super::Target;
use crate::client::Client;
use crate::config;
use crate::stackfile::StackFile;

#[derive(Args)]
pub struct Serve {
    /// Address to listen on
    #[arg(long, env = "GRAPHENE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// State directory [default: $GRAPHENE_STATE_DIR or ~/.local/share/graphene]
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// Build and deploy this stack file once the gateway is up
    #[arg(long, value_name = "STACK_FILE")]
    pub deploy: Option<PathBuf>,
    /// Python interpreter used to create functions' virtual environments
    #[arg(long, env = "GRAPHENE_PYTHON", default_value = "python3")]
    pub python: String,
    /// Largest request body, in bytes
    #[arg(long, env = "GRAPHENE_MAX_BODY", default_value_t = graphene_gateway::DEFAULT_MAX_BODY)]
    pub max_body: usize,
    /// Run functions without the bubblewrap sandbox even where it works
    #[arg(long)]
    pub no_sandbox: bool,
    /// Serve HTTPS with this PEM certificate (chain); reloaded when it changes
    #[arg(
        long,
        env = "GRAPHENE_TLS_CERT",
        requires = "tls_key",
        conflicts_with = "tls_self_signed"
    )]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert
    #[arg(long, env = "GRAPHENE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Serve HTTPS with a self-signed certificate made once in <state-dir>/tls
    /// (for development; clients trust it with GRAPHENE_CA=<state-dir>/tls/cert.pem)
    #[arg(long)]
    pub tls_self_signed: bool,
    /// A reverse proxy (address or block, e.g. 10.0.0.0/8) whose
    /// X-Forwarded-For is believed; repeat for several
    #[arg(long, env = "GRAPHENE_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxy: Vec<graphene_gateway::proxy::Cidr>,
    /// YAML file naming the OIDC issuers whose tokens are accepted
    #[arg(long, env = "GRAPHENE_AUTH_CONFIG")]
    pub auth_config: Option<PathBuf>,
    /// How long finished asynchronous jobs (and their results) are kept
    #[arg(long, env = "GRAPHENE_JOB_RETENTION", default_value = "7d", value_parser = graphene_core::duration::parse)]
    pub job_retention: std::time::Duration,
    /// Keep asynchronous jobs in NATS JetStream (nats://host:port), shared
    /// by every gateway pointed at it, instead of the state directory
    #[arg(long, env = "GRAPHENE_QUEUE", value_name = "URL")]
    pub queue: Option<String>,
    /// Largest job result kept and sent to callbacks, in bytes
    #[arg(long, env = "GRAPHENE_JOB_RESULT_LIMIT", default_value_t = graphene_gateway::DEFAULT_JOB_RESULT_LIMIT)]
    pub job_result_limit: usize,
    /// Take the admin credential from this file (e.g. a mounted Secret, the
    /// same for every gateway replica) instead of making one in the state
    /// directory
    #[arg(long, env = "GRAPHENE_ADMIN_TOKEN_FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Revisions kept per function for history and rollback (the serving
    /// one besides); their images are kept too
    #[arg(long, env = "GRAPHENE_KEEP_REVISIONS", default_value_t = graphene_gateway::DEFAULT_KEEP_REVISIONS)]
    pub keep_revisions: usize,
    /// Where functions run: `local` (processes on this machine) or
    /// `kubernetes` (pods of OCI images, with the kubeconfig of
    /// KUBECONFIG or ~/.kube/config, or the pod's service account)
    #[arg(long, env = "GRAPHENE_PROVIDER", value_enum, default_value = "local")]
    pub provider: ProviderKind,
    /// With --provider kubernetes: a namespace graphene manages functions
    /// in; repeat for several
    #[arg(long, env = "GRAPHENE_FUNCTIONS_NAMESPACE", value_delimiter = ',', default_value = graphene_core::DEFAULT_NAMESPACE)]
    pub functions_namespace: Vec<String>,
    /// With --provider kubernetes: a Secret (of type
    /// kubernetes.io/dockerconfigjson, in each function namespace) that
    /// pods pull their images with; repeat for several
    #[arg(long, env = "GRAPHENE_IMAGE_PULL_SECRETS", value_delimiter = ',')]
    pub image_pull_secret: Vec<String>,
    /// With --provider kubernetes: the namespace of the gateways' own
    /// objects: API tokens, grants, the audit trail and the Lease that
    /// elects the one running the autoscaler [default: the first functions
    /// namespace]
    #[arg(long, env = "GRAPHENE_GATEWAY_NAMESPACE")]
    pub gateway_namespace: Option<String>,
    /// With --provider kubernetes: the URL other gateways reach this one at
    /// (for their load reports while it leads) [default: the listen address]
    #[arg(long, env = "GRAPHENE_ADVERTISE_URL", value_name = "URL")]
    pub advertise_url: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ProviderKind {
    Local,
    Kubernetes,
}

impl Serve {
    pub async fn run(self) -> anyhow::Result<()> {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("GRAPHENE_LOG")
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
            )
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
        let state = config::state_dir(self.state_dir.clone());
        std::fs::create_dir_all(&state)
            .with_context(|| format!("creating the state directory {}", state.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))?;
        }
        // Absolute, so that the sandbox can hide it whatever the working folder.
        let state = state.canonicalize()?;
        // One server per state directory: two would fight over replicas and
        // sockets. The lock goes with the process, however it ends.
        let lock = std::fs::File::create(state.join("lock"))?;
        lock.try_lock().map_err(|_| {
            anyhow::anyhow!(
                "another graphene serve is already using the state directory {}",
                state.display()
            )
        })?;
        let auth = match &self.auth_config {
            Some(path) => graphene_gateway::oidc::AuthConfig::load(path)?,
            None => Default::default(),
        };
        // Bound first: other gateways are told this address.
        let listener = tokio::net::TcpListener::bind(self.listen)
            .await
            .with_context(|| format!("listening on {}", self.listen))?;
        match self.provider {
            ProviderKind::Local => {
                let (provider, builder) = LocalProvider::open(LocalConfig {
                    dir: state.join("local"),
                    python: self.python.clone(),
                    sandbox: !self.no_sandbox,
                    hidden: self.hidden_from_functions(&state),
                    logs_to_stdout: false,
                    runner_exit: None,
                })
                .context("opening the local runtime")?;
                tracing::info!(sandbox = provider.sandboxed(), "local runtime open");
                self.serve_with(
                    state,
                    auth,
                    listener,
                    Arc::new(provider),
                    Arc::new(builder),
                    Default::default(),
                )
                .await
            }
            #[cfg(feature = "kubernetes")]
            ProviderKind::Kubernetes => {
                use graphene_kubernetes::{KubernetesConfig, KubernetesProvider, RegistryImages};
                let client = KubernetesProvider::client()
                    .await
                    .map_err(anyhow::Error::msg)?;
                // Functions, secrets, tokens, grants and the audit trail
                // live in the cluster.
                let own = self
                    .gateway_namespace
                    .clone()
                    .unwrap_or_else(|| self.functions_namespace[0].clone());
                graphene_core::names::validate("namespace", &own)
                    .map_err(|e| anyhow::anyhow!("--gateway-namespace: {e}"))?;
                let stores = graphene_core::store::Stores {
                    functions: Some(Arc::new(
                        graphene_kubernetes::functions::ClusterFunctions::new(
                            client.clone(),
                            self.functions_namespace.clone(),
                        ),
                    )),
                    secrets: Some(Arc::new(graphene_kubernetes::secrets::ClusterSecrets::new(
                        client.clone(),
                        self.functions_namespace.clone(),
                    ))),
                    access: Some(Arc::new(graphene_kubernetes::access::ClusterAccess::new(
                        client.clone(),
                        &own,
                    ))),
                    // One gateway at a time runs the autoscaler.
                    leadership: Some(graphene_kubernetes::lease::LeaseElection::start(
                        client.clone(),
                        &own,
                        gateway_identity(),
                        self.advertised(listener.local_addr()?),
                    )),
                };
                let provider = KubernetesProvider::new(KubernetesConfig {
                    client,
                    namespaces: self.functions_namespace.clone(),
                    image_pull_secrets: self.image_pull_secret.clone(),
                });
                tracing::info!(
                    namespaces = %self.functions_namespace.join(","),
                    "Kubernetes provider open"
                );
                self.serve_with(
                    state,
                    auth,
                    listener,
                    Arc::new(provider),
                    Arc::new(RegistryImages),
                    stores,
                )
                .await
            }
            #[cfg(not(feature = "kubernetes"))]
            ProviderKind::Kubernetes => anyhow::bail!(
                "--provider kubernetes: this graphene was built without Kubernetes support \
                 (build it with `--features kubernetes`)"
            ),
        }
    }

    /// Runs the gateway on `provider` until a signal stops it.
    async fn serve_with<P: graphene_core::provider::Provider>(
        &self,
        state: PathBuf,
        auth: graphene_gateway::oidc::AuthConfig,
        listener: tokio::net::TcpListener,
        provider: Arc<P>,
        builder: Arc<dyn graphene_core::provider::Builder>,
        stores: graphene_core::store::Stores,
    ) -> anyhow::Result<()> {
        let (gateway, created) = Gateway::open(
            GatewayConfig {
                state_dir: state.clone(),
                max_body: self.max_body,
                trusted_proxies: self.trusted_proxy.clone(),
                auth,
                job_retention: self.job_retention,
                job_result_limit: self.job_result_limit,
                queue: self.queue.clone(),
                keep_revisions: self.keep_revisions,
                admin_token_file: self.admin_token_file.clone(),
            },
            provider,
            builder,
            stores,
        )
        .await?;
        if let Some(path) = &created {
            tracing::info!(
                "created the admin credential; it is in {} (use it with `graphene login --password-stdin < {}`)",
                path.display(),
                path.display()
            );
        }
        let tls = match (&self.tls_cert, &self.tls_key, self.tls_self_signed) {
            (Some(cert), Some(key), _) => Some(graphene_gateway::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (_, _, true) => Some(graphene_gateway::tls::self_signed(
                &state.join("tls"),
                &[self.listen.ip().to_string()],
            )?),
            _ => None,
        };
        let ca = tls.as_ref().map(|t| t.cert.clone());
        let tls = tls
            .map(graphene_gateway::tls::Tls::open)
            .transpose()
            .context("setting up TLS")?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let addr = listener.local_addr()?;
        let restored = gateway.restore().await;
        tracing::info!(
            state_dir = %state.display(),
            restored,
            "graphene listening on {scheme}://{addr}"
        );
        if let Some(stack) = self.deploy.clone() {
            let url = format!("{scheme}://{addr}");
            let token = std::fs::read_to_string(state.join(graphene_gateway::TOKEN_FILE))
                .ok()
                .map(|t| t.trim().to_string());
            tokio::spawn(async move {
                if let Err(e) = deploy_stack(&stack, &url, token, ca).await {
                    tracing::error!("deploying {}: {e:#}", stack.display());
                }
            });
        }
        gateway
            .serve(listener, tls, shutdown_signal())
            .await
            .context("serving")?;
        tracing::info!("stopping functions");
        gateway.shutdown().await;
        Ok(())
    }
}

/// This gateway's name among others: its host's (a pod's name, which the
/// tests and `kubectl get lease` read), then its process and start time,
/// so that a restarted one is another.
#[cfg(feature = "kubernetes")]
fn gateway_identity() -> String {
    let host = config::env("HOSTNAME").unwrap_or_else(|| "gateway".into());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    format!("{host}-{:x}{nanos:08x}", std::process::id())
}

impl Serve {
    /// Where other gateways reach this one: --advertise-url, or the address
    /// it listens on (loopback for an unspecified one).
    #[cfg(feature = "kubernetes")]
    fn advertised(&self, bound: std::net::SocketAddr) -> String {
        if let Some(url) = &self.advertise_url {
            return url.trim_end_matches('/').to_string();
        }
        let scheme = match self.tls_cert.is_some() || self.tls_self_signed {
            true => "https",
            false => "http",
        };
        let host = match bound.ip() {
            ip if ip.is_unspecified() => std::net::IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        format!(
            "{scheme}://{}",
            std::net::SocketAddr::new(host, bound.port())
        )
    }

    /// What functions must not read even though the server's user can: its
    /// state, its keys and configuration, its per-user runtime sockets.
    fn hidden_from_functions(&self, state: &std::path::Path) -> Vec<PathBuf> {
        let mut hidden = vec![state.to_path_buf()];
        if let Some(home) = config::env("HOME").map(PathBuf::from) {
            for sub in [
                ".config", ".ssh", ".gnupg", ".aws", ".kube", ".docker", ".netrc",
            ] {
                hidden.push(home.join(sub));
            }
        }
        if let Some(run) = config::env("XDG_RUNTIME_DIR") {
            hidden.push(run.into());
        }
        hidden.extend(
            self.tls_cert
                .iter()
                .chain(&self.tls_key)
                .chain(&self.auth_config)
                .cloned(),
        );
        hidden
            .into_iter()
            .filter_map(|p| p.canonicalize().ok())
            .collect()
    }
}

async fn deploy_stack(
    stack: &std::path::Path,
    url: &str,
    token: Option<String>,
    ca: Option<PathBuf>,
) -> anyhow::Result<()> {
    let file = StackFile::load(stack)?;
    let client = Client::with_ca(url, token, ca.as_deref())?;
    super::build::build_all(&client, &file, None).await?;
    super::deploy::deploy_all(
        &client,
        &file,
        None,
        &Default::default(),
        &Target::default(),
        std::time::Duration::from_secs(600),
    )
    .await
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

//! `graphene install kubernetes`: prints (or applies) what runs graphene on
//! a cluster. The manifests come from `graphene_kubernetes::install`.

use clap::{Args, Subcommand};

#[derive(Args)]
pub struct Install {
    #[command(subcommand)]
    pub target: InstallTarget,
}

#[derive(Subcommand)]
pub enum InstallTarget {
    /// The gateway on Kubernetes: the Function resource, namespaces, RBAC,
    /// the gateway Deployment and Service, a NetworkPolicy for functions
    Kubernetes(Kubernetes),
}

#[derive(Args)]
pub struct Kubernetes {
    /// Namespace the gateway runs in
    #[arg(long, default_value = "graphene")]
    pub namespace: String,
    /// Namespace functions run in; repeat for several
    #[arg(long, value_delimiter = ',', default_value = "graphene-fn")]
    pub functions_namespace: Vec<String>,
    /// Gateway replicas
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// The gateway's image: `graphene` built with `--features kubernetes`
    /// as its entrypoint
    #[arg(long, default_value = "graphene/gateway:0.1.0")]
    pub image: String,
    /// Keep asynchronous jobs in this NATS JetStream (nats://host:port),
    /// shared by the gateway replicas
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Only the Function resource definition: for a gateway run outside
    /// the cluster (`graphene serve --provider kubernetes` with a kubeconfig)
    #[arg(long)]
    pub resource_only: bool,
    /// Apply them to the cluster of KUBECONFIG (or ~/.kube/config) instead
    /// of printing them
    #[arg(long)]
    pub apply: bool,
}

impl Install {
    pub async fn run(self) -> anyhow::Result<()> {
        match self.target {
            InstallTarget::Kubernetes(k) => k.run().await,
        }
    }
}

#[cfg(feature = "kubernetes")]
impl Kubernetes {
    async fn run(self) -> anyhow::Result<()> {
        use graphene_kubernetes::install::{function_crd, manifests, InstallOptions};
        let options = InstallOptions {
            namespace: self.namespace,
            functions_namespaces: self.functions_namespace,
            replicas: self.replicas,
            image: self.image,
            nats: self.nats,
            admin_token: graphene_gateway::new_admin_token(),
        };
        options.validate().map_err(anyhow::Error::msg)?;
        let all = match self.resource_only {
            true => vec![function_crd()],
            false => manifests(&options),
        };
        if !self.apply {
            let mut out = String::new();
            for m in &all {
                out.push_str("---\n");
                out.push_str(&serde_yaml::to_string(m)?);
            }
            print!("{out}");
            return Ok(());
        }
        let client = graphene_kubernetes::KubernetesProvider::client()
            .await
            .map_err(anyhow::Error::msg)?;
        for m in &all {
            let what = graphene_kubernetes::install::apply(&client, m)
                .await
                .map_err(anyhow::Error::msg)?;
            eprintln!("applied {what}");
        }
        graphene_kubernetes::install::established(&client)
            .await
            .map_err(anyhow::Error::msg)?;
        if self.resource_only {
            return Ok(());
        }
        eprintln!(
            "the admin credential is in Secret graphene-admin of namespace {}:\n  kubectl -n {} get secret graphene-admin -o jsonpath='{{.data.admin-token}}' | base64 -d",
            options.namespace, options.namespace
        );
        Ok(())
    }
}

#[cfg(not(feature = "kubernetes"))]
impl Kubernetes {
    async fn run(self) -> anyhow::Result<()> {
        anyhow::bail!(
            "install kubernetes: this graphene was built without Kubernetes support \
             (build it with `--features kubernetes`)"
        )
    }
}

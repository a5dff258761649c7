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
    /// Namespace functions run in; repeat for several (the first is where
    /// requests that name none go, as with OpenFaaS: openfaas-fn)
    #[arg(long, value_delimiter = ',', default_value = graphene_core::DEFAULT_NAMESPACE)]
    pub functions_namespace: Vec<String>,
    /// Gateway replicas
    #[arg(long, default_value_t = 2)]
    pub replicas: u32,
    /// The gateway's image: `graphene` built with `--features kubernetes`
    /// as its entrypoint
    #[arg(
        long,
        default_value = "graphene/gateway:0.1.0",
        conflicts_with = "push_image"
    )]
    pub image: String,
    /// Build the gateway's image of this very `graphene` binary, push it
    /// here (REGISTRY/NAME:TAG) and run it by digest
    #[arg(long, value_name = "IMAGE")]
    pub push_image: Option<String>,
    /// The base of the image `--push-image` builds (glibc 2.36 or newer)
    #[arg(long, value_name = "IMAGE", requires = "push_image")]
    pub base: Option<String>,
    /// The OCI builder `--push-image` uses: buildah, podman or docker
    /// (default: the first installed)
    #[arg(long, requires = "push_image")]
    pub builder: Option<String>,
    /// Keep asynchronous jobs in this NATS JetStream (nats://host:port),
    /// shared by the gateway replicas
    #[arg(long, value_name = "URL", conflicts_with = "with_nats")]
    pub nats: Option<String>,
    /// Install NATS JetStream in the gateway's namespace (a StatefulSet
    /// with a 1Gi persistent volume, reachable from the gateways only) and
    /// keep asynchronous jobs there
    #[arg(long)]
    pub with_nats: bool,
    /// The image `--with-nats` runs
    #[arg(
        long,
        value_name = "IMAGE",
        default_value = "docker.io/library/nats:2.10-alpine"
    )]
    pub nats_image: String,
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
        let image = match &self.push_image {
            Some(to) if !self.resource_only => {
                push_gateway_image(to, self.base.as_deref(), self.builder.as_deref()).await?
            }
            _ => self.image,
        };
        let options = InstallOptions {
            namespace: self.namespace,
            functions_namespaces: self.functions_namespace,
            replicas: self.replicas,
            image,
            nats: self.nats,
            nats_image: self.with_nats.then_some(self.nats_image),
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

/// Builds the gateway's image of this binary and pushes it to `to`; the
/// pushed image by digest.
#[cfg(feature = "kubernetes")]
async fn push_gateway_image(
    to: &str,
    base: Option<&str>,
    builder: Option<&str>,
) -> anyhow::Result<String> {
    use crate::oci;
    use anyhow::Context as _;
    graphene_kubernetes::manifest::image_reference(to).map_err(|e| {
        anyhow::anyhow!(
            "--push-image: {}",
            e.to_string().trim_start_matches("image: ")
        )
    })?;
    let builder = oci::Builder::find(builder)?;
    let context =
        std::env::temp_dir().join(format!("graphene-gateway-image-{}", std::process::id()));
    oci::write_gateway_context(base.unwrap_or(oci::GATEWAY_BASE), &context)
        .context("writing the gateway image's build context")?;
    let built = builder.build(&context, to, "gateway: ").await;
    let _ = std::fs::remove_dir_all(&context);
    built?;
    let digest = builder.push(to, "gateway: ").await?;
    let image = oci::by_digest(to, &digest);
    eprintln!("gateway: pushed {image}");
    Ok(image)
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

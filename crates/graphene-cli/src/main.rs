//! The `graphene` binary: `graphene serve` runs the platform; every other
//! verb is a client of a running gateway. One file per verb in `commands/`.

mod client;
mod commands;
mod config;
mod files;
mod oci;
mod stackfile;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "graphene",
    version,
    about = "Serverless Python functions and ML models as REST endpoints"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway with the local runtime.
    Serve(commands::serve::Serve),
    /// Create a function folder from a built-in template and add it to the stack file.
    New(commands::new::New),
    /// Build the stack file's functions on the server.
    Build(commands::build::Build),
    /// Deploy the stack file's functions (already built).
    Deploy(commands::deploy::Deploy),
    /// Build and deploy the stack file's functions.
    Up(commands::up::Up),
    /// Call a function with stdin as the request body.
    Invoke(commands::invoke::Invoke),
    /// List deployed functions.
    #[command(alias = "ls")]
    List(commands::list::List),
    /// Show a function's settings and runtime state.
    Describe(commands::describe::Describe),
    /// Show (or follow) a function's logs.
    Logs(commands::logs::Logs),
    /// Remove functions.
    #[command(alias = "remove")]
    Rm(commands::rm::Rm),
    /// Set a function's replica count.
    Scale(commands::scale::Scale),
    /// List a function's revisions: state, image, who deployed them, when.
    History(commands::history::History),
    /// Run an earlier revision of a function again (as a new revision).
    Rollback(commands::rollback::Rollback),
    /// Manage secrets.
    Secret(commands::secret::Secret),
    /// Store a credential for a gateway: a token, or one from an OIDC issuer.
    Login(commands::login::Login),
    /// Show who the gateway takes you for.
    Whoami(commands::grant::Whoami),
    /// Manage API tokens (for services and customers).
    Token(commands::token::Token),
    /// Manage who may do what.
    Grant(commands::grant::Grant),
    /// Show who changed what, and when.
    Audit(commands::grant::Audit),
    /// Follow, list and cancel asynchronous calls.
    Job(commands::job::Job),
    /// Store a credential for an OCI registry (for `build --oci --push`).
    Registry(commands::registry::Registry),
    /// Print or apply what runs graphene on a cluster.
    Install(commands::install::Install),
    /// Serve one function in a container (its entrypoint), speaking
    /// OpenFaaS's watchdog contract; configured by environment variables.
    Watchdog(commands::watchdog::Watchdog),
}

fn main() -> ExitCode {
    quiet_on_closed_pipe();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Serve(c) => c.run().await,
            Command::New(c) => c.run(),
            Command::Build(c) => c.run().await,
            Command::Deploy(c) => c.run().await,
            Command::Up(c) => c.run().await,
            Command::Invoke(c) => c.run().await,
            Command::List(c) => c.run().await,
            Command::Describe(c) => c.run().await,
            Command::Logs(c) => c.run().await,
            Command::Rm(c) => c.run().await,
            Command::Scale(c) => c.run().await,
            Command::History(c) => c.run().await,
            Command::Rollback(c) => c.run().await,
            Command::Secret(c) => c.run().await,
            Command::Login(c) => c.run().await,
            Command::Whoami(c) => c.run().await,
            Command::Token(c) => c.run().await,
            Command::Grant(c) => c.run().await,
            Command::Audit(c) => c.run().await,
            Command::Job(c) => c.run().await,
            Command::Registry(c) => c.run().await,
            Command::Watchdog(c) => c.run().await,
            Command::Install(c) => c.run().await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `graphene ... | head`: once the reader is gone, stop quietly with the
/// status a process killed by SIGPIPE has, as other command-line tools do,
/// instead of a panic message about printing to stdout.
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info)
    }));
}

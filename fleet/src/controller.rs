//! The controller: the scheduler and the fleet API. (Being built.)

/// `pedestal controller`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ControllerArgs {
    /// etcd endpoints, comma-separated.
    #[arg(long, env = "PEDESTAL_ETCD", value_delimiter = ',', required = true)]
    pub etcd: Vec<String>,
}

/// Runs a controller until SIGTERM or SIGINT.
pub fn run(_args: ControllerArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("the controller is being built")
}

//! `pedestal fleet ...`: the operator's client of a controller. (Being built.)

/// `pedestal fleet`'s subcommands and flags.
#[derive(Debug, Clone, clap::Args)]
pub struct FleetArgs {
    /// A controller's API, leader or not.
    #[arg(long, env = "PEDESTAL_CONTROLLER", default_value = "http://127.0.0.1:7080")]
    pub controller: String,
}

/// Runs one `pedestal fleet` command.
pub fn run(_args: FleetArgs) -> anyhow::Result<std::process::ExitCode> {
    anyhow::bail!("the fleet CLI is being built")
}

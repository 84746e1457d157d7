//! The base agent: joins a base to a fleet. (Being built.)

/// `pedestal serve`'s fleet flags.
#[derive(Debug, Clone, clap::Args)]
pub struct JoinArgs {
    /// etcd endpoints, comma-separated: joins this base to the fleet they hold.
    #[arg(long, env = "PEDESTAL_FLEET", value_delimiter = ',')]
    pub fleet: Vec<String>,
}

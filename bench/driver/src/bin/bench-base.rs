//! A custom base built with the `pedestal-base` library: the universal base plus the benchmark
//! handlers compiled natively at `/native/...`. Started by `pedestal-bench`.
//!
//! `bench-base DATA_DIR [--request-accounting off]`: the flag turns off the base's per-request
//! accounting (latency histograms, the recent error rate), to measure what it costs.

use std::{path::PathBuf, time::Duration};

use pedestal_base::{Base, Config};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let data_dir =
        args.first().filter(|a| !a.starts_with("--")).map_or_else(|| "bench-data".into(), PathBuf::from);
    let request_accounting = !args.windows(2).any(|w| w[0] == "--request-accounting" && w[1] == "off");
    let config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        data_dir,
        drain_timeout: Duration::from_secs(5),
        request_accounting,
        ..Config::default()
    };
    let native = axum::Router::new().nest("/native", bench_handlers::router());
    let base = Base::new(config)?.with_native_routes(native);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(base.serve())
}

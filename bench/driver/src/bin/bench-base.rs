//! A custom base built with the `pedestal-base` library: the universal base plus the benchmark
//! handlers compiled natively at `/native/...`. Started by `pedestal-bench`.

use std::{path::PathBuf, time::Duration};

use pedestal_base::{Base, Config};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_env_filter("warn").with_writer(std::io::stderr).init();
    let data_dir = std::env::args().nth(1).map(PathBuf::from).unwrap_or_else(|| "bench-data".into());
    let config = Config {
        listen: ([127, 0, 0, 1], 0).into(),
        admin_listen: ([127, 0, 0, 1], 0).into(),
        data_dir,
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let native = axum::Router::new().nest("/native", bench_handlers::router());
    let base = Base::new(config)?.with_native_routes(native);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(base.serve())
}

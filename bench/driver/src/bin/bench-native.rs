//! The benchmark handlers as a minimal stand-alone axum service: the "separate process" side of
//! `cargo xtask bench density`'s merged-vs-separate comparison. Prints `listening <addr>`.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    axum::serve(listener, bench_handlers::router()).await?;
    Ok(())
}

//! `search-base`: the search platform's own base, built with the `pedestal-base` library.
//!
//! It defines the `ranker` SPI (modules implementing another major version are refused), and
//! serves `GET /search?q=...&k=N`: the query goes to every ranker module at once, and their hits
//! are merged by summed score. `GET /search/rankers` describes the rankers. Everything else — the
//! operations API, `/<module>/...` routes, versions, switching, limits — is the universal base's.
//!
//! `search-base [pedestal serve flags...]`: the same `--listen`, `--admin-listen`, `--data-dir`
//! as `pedestal serve` (defaults 127.0.0.1:7080 and :7081, `./search-data`). Like `pedestal serve`
//! it runs supervised (`pedestal_base::supervise`): a crashing ranker costs a worker restart, not
//! the platform.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Instant};

use axum::{Json, Router, extract::Query as QueryString, http::StatusCode, routing::get};
use pedestal_base::{Base, Config, Registry};
use ranker_spi::{Hit, Query, Ranker, RankerSpi};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Deserialize)]
struct Search {
    q: String,
    k: Option<usize>,
}

/// Fans the query out to every ranker and merges their hits.
async fn search(registry: Arc<Registry>, search: Search) -> (StatusCode, Json<Value>) {
    let began = Instant::now();
    let limit = search.k.unwrap_or(5).clamp(1, 50);
    let rankers = registry.implementations::<RankerSpi>();
    if rankers.is_empty() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"code": "NO_RANKERS", "message": "no ranker module is running"})),
        );
    }
    let query = Query { text: search.q.clone(), limit };
    let answers = futures_util::future::join_all(rankers.iter().map(|ranker| {
        let query = query.clone();
        async move { (ranker.target(), ranker.rank(query).await) }
    }))
    .await;
    let mut merged: BTreeMap<u32, (Hit, f64, Vec<String>)> = BTreeMap::new();
    let mut by_ranker = Vec::new();
    for (ranker, answer) in answers {
        match answer {
            Ok(hits) => {
                by_ranker.push(json!({"ranker": ranker, "hits": hits.len()}));
                for hit in hits {
                    let entry = merged.entry(hit.id).or_insert_with(|| (hit.clone(), 0.0, Vec::new()));
                    entry.1 += hit.score;
                    entry.2.push(ranker.clone());
                }
            }
            // One failing ranker does not fail the search: it is reported next to the results.
            Err(e) => by_ranker.push(json!({"ranker": ranker, "error": e})),
        }
    }
    let mut results: Vec<_> = merged.into_values().collect();
    results.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
    results.truncate(limit);
    let results: Vec<Value> = results
        .into_iter()
        .map(|(hit, score, rankers)| json!({"id": hit.id, "title": hit.title, "score": score, "rankers": rankers}))
        .collect();
    let took_us = began.elapsed().as_micros() as u64;
    (
        StatusCode::OK,
        Json(json!({"query": search.q, "results": results, "rankers": by_ranker, "took_us": took_us})),
    )
}

/// What each ranker says it is (a ranker without `describe` gets the SPI's default).
async fn rankers(registry: Arc<Registry>) -> Json<Value> {
    let rankers = registry.implementations::<RankerSpi>();
    let described = futures_util::future::join_all(rankers.iter().map(|r| async move {
        match r.describe().await {
            Ok(text) => json!({"ranker": r.target(), "describe": text}),
            Err(e) => json!({"ranker": r.target(), "error": e}),
        }
    }))
    .await;
    Json(json!({"rankers": described}))
}

fn routes(registry: Arc<Registry>) -> Router {
    let searching = Arc::clone(&registry);
    Router::new()
        .route("/search", get(move |QueryString(q): QueryString<Search>| search(Arc::clone(&searching), q)))
        .route("/search/rankers", get(move || rankers(Arc::clone(&registry))))
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt().with_env_filter("info").with_writer(std::io::stderr).init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let mut config = Config {
        listen: flag("--listen").map_or(Ok(([127, 0, 0, 1], 7080).into()), |a| a.parse::<SocketAddr>())?,
        admin_listen: flag("--admin-listen")
            .map_or(Ok(([127, 0, 0, 1], 7081).into()), |a| a.parse::<SocketAddr>())?,
        data_dir: flag("--data-dir").map_or_else(|| "search-data".into(), Into::into),
        ..Config::default()
    };
    config.admin_token = flag("--admin-token");
    config.admin_token_file = flag("--admin-token-file").map(Into::into);
    // The supervisor returns here when its worker stopped for good; the worker builds the base.
    if let Some(exit) = pedestal_base::supervise(&config)? {
        return Ok(exit);
    }
    let base = Base::builder(config).spi::<RankerSpi>().routes_with(routes).build()?;
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(base.serve())?;
    Ok(std::process::ExitCode::SUCCESS)
}

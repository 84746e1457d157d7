//! The popularity ranker: matching documents, most read first. Version 1.0.0 (a later version
//! can be deployed next to it and switched to).

use pedestal_module_api::{Module, SpiError, axum::Router, export_module};
use ranker_spi::{DOCS, Hit, Query, Ranker, RankerSpi, matches, terms, top};

struct Popularity;

impl Module for Popularity {
    fn router(&self) -> Router {
        Router::new()
    }
}

impl Ranker for Popularity {
    async fn rank(&self, query: Query) -> Result<Vec<Hit>, SpiError> {
        let terms = terms(&query.text);
        let most = DOCS.iter().map(|d| d.views).max().unwrap_or(1) as f64;
        Ok(top(
            DOCS.iter()
                .map(|d| (d, if matches(d, &terms) > 0 { (f64::from(d.views) / most).sqrt() } else { 0.0 }))
                .collect(),
            query.limit,
        ))
    }

    // No `describe`: the SPI's default answers for it.
}

export_module!(Popularity, provides = [RankerSpi]);

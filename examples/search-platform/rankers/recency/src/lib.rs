//! The recency ranker: matching documents, newest first.

use pedestal_module_api::{Module, SpiError, axum::Router, export_module};
use ranker_spi::{DOCS, Hit, Query, Ranker, RankerSpi, matches, terms, top};

struct Recency;

impl Module for Recency {
    fn router(&self) -> Router {
        Router::new()
    }
}

impl Ranker for Recency {
    async fn rank(&self, query: Query) -> Result<Vec<Hit>, SpiError> {
        let terms = terms(&query.text);
        let score = |age: u32| 1.0 / (1.0 + f64::from(age) / 7.0);
        Ok(top(
            DOCS.iter().map(|d| (d, if matches(d, &terms) > 0 { score(d.age_days) } else { 0.0 })).collect(),
            query.limit,
        ))
    }

    async fn describe(&self) -> Result<String, SpiError> {
        Ok("recency: matching documents, newest first".into())
    }
}

export_module!(Recency, provides = [RankerSpi]);

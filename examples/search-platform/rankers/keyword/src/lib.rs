//! The keyword ranker: the share of the query's words a document contains.

use pedestal_module_api::{Module, SpiError, axum::Router, export_module};
use ranker_spi::{DOCS, Hit, Query, Ranker, RankerSpi, matches, terms, top};

struct Keyword;

impl Module for Keyword {
    fn router(&self) -> Router {
        Router::new()
    }
}

impl Ranker for Keyword {
    async fn rank(&self, query: Query) -> Result<Vec<Hit>, SpiError> {
        let terms = terms(&query.text);
        let wanted = terms.len().max(1) as f64;
        Ok(top(DOCS.iter().map(|d| (d, matches(d, &terms) as f64 / wanted)).collect(), query.limit))
    }

    async fn describe(&self) -> Result<String, SpiError> {
        Ok("keyword: the share of the query's words a document contains".into())
    }
}

export_module!(Keyword, provides = [RankerSpi]);

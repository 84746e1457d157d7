//! The `ranker` SPI of the search-platform example: the base fans a query out to every module
//! implementing it and merges their hits. Also the small document collection the rankers share
//! (in a real platform, each algorithm would read its own index).

use pedestal_module_api::SpiError;
use serde::{Deserialize, Serialize};

pedestal_module_api::spi! {
    /// Scores documents for a query.
    #[spi(name = "ranker", version = "1.0.0", id = RankerSpi)]
    pub trait Ranker {
        /// The best `limit` documents for `query`, best first, with scores in `0.0..=1.0`.
        async fn rank(&self, query: Query) -> Result<Vec<Hit>, SpiError>;
        /// A one-line description of the algorithm.
        async fn describe(&self) -> Result<String, SpiError> {
            Ok("a ranker".into())
        }
    }
}

/// A search query.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Query {
    /// The words to look for.
    pub text: String,
    /// How many hits to return at most.
    pub limit: usize,
}

/// One scored document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    /// The document's id.
    pub id: u32,
    /// Its title.
    pub title: String,
    /// How well it matches, `0.0..=1.0`.
    pub score: f64,
}

/// A document of the shared collection.
#[derive(Debug, Clone, Copy)]
pub struct Doc {
    /// Its id.
    pub id: u32,
    /// Its title.
    pub title: &'static str,
    /// Its text.
    pub body: &'static str,
    /// Days since it was published.
    pub age_days: u32,
    /// How often it was read.
    pub views: u32,
}

/// The collection every ranker module searches.
pub const DOCS: &[Doc] = &[
    Doc {
        id: 1,
        title: "Unloading native modules",
        body: "dlclose unload modules pinned threads",
        age_days: 3,
        views: 120,
    },
    Doc {
        id: 2,
        title: "Async Rust in shared libraries",
        body: "tokio runtime per module async rust",
        age_days: 40,
        views: 900,
    },
    Doc {
        id: 3,
        title: "Counting allocations per module",
        body: "allocator heap accounting module memory",
        age_days: 10,
        views: 300,
    },
    Doc {
        id: 4,
        title: "Canary releases with weights",
        body: "weights canary versions switch traffic",
        age_days: 1,
        views: 80,
    },
    Doc {
        id: 5,
        title: "Rust modules, explained",
        body: "rust modules cdylib abi stable",
        age_days: 200,
        views: 5000,
    },
    Doc {
        id: 6,
        title: "Zero-downtime switches",
        body: "switch versions drain traffic zero failed requests",
        age_days: 7,
        views: 450,
    },
];

/// The query's words, lower-cased.
pub fn terms(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_lowercase).collect()
}

/// How many of `terms` appear in `doc` (title or body).
pub fn matches(doc: &Doc, terms: &[String]) -> usize {
    let text = format!("{} {}", doc.title, doc.body).to_lowercase();
    terms.iter().filter(|t| text.split(|c: char| !c.is_alphanumeric()).any(|w| w == t.as_str())).count()
}

/// The `limit` best of `scored`, best first, as hits.
pub fn top(mut scored: Vec<(&Doc, f64)>, limit: usize) -> Vec<Hit> {
    scored.retain(|(_, score)| *score > 0.0);
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
    scored.truncate(limit);
    scored.into_iter().map(|(doc, score)| Hit { id: doc.id, title: doc.title.into(), score }).collect()
}

//! The search-platform example (`examples/search-platform`): a custom base built with the
//! library defines the `ranker` SPI and fans `/search` out to three ranker modules; rankers are
//! upgraded and removed while queries keep flowing.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
};

use pedestal_tests::{TestBase, artifacts};
use serde_json::json;

#[test]
fn queries_fan_out_to_every_ranker_and_keep_flowing_through_upgrades() {
    let base = TestBase::start_custom(artifacts::SEARCH_BASE, &[]);
    // A custom base gets the supervisor by calling `pedestal_base::supervise`.
    let process = base.admin_get("/api/v1/base").json;
    assert_eq!(process["supervised"], true, "{process}");
    assert_eq!(base.workers(), vec![base.pid()], "{process}");
    for ranker in [artifacts::RANKER_KEYWORD, artifacts::RANKER_RECENCY, artifacts::RANKER_POPULARITY] {
        base.install_ok(ranker);
    }
    let found = base.get("/search?q=rust%20modules&k=3");
    assert_eq!(found.status, 200, "{found:?}");
    assert_eq!(found.json["results"][0]["title"], "Rust modules, explained", "{found:?}");
    assert_eq!(found.json["results"][0]["rankers"].as_array().unwrap().len(), 3, "{found:?}");
    assert_eq!(found.json["rankers"].as_array().unwrap().len(), 3);

    let described = base.get("/search/rankers").json;
    let popularity = described["rankers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["ranker"] == "ranker-popularity@1.0.0")
        .cloned();
    assert_eq!(popularity.unwrap()["describe"], "a ranker", "the SPI's default: {described}");
    let listed = base.admin_get("/api/v1/spis").json;
    assert_eq!(listed["declared"], json!({"ranker": "1.0.0"}), "the custom base declares its SPI");

    // Upgrade the keyword ranker in place (a rebuild of the same version, replaced) and remove
    // the recency ranker, while queries keep flowing: none fails.
    let stop = AtomicBool::new(false);
    let answered = thread::scope(|scope| {
        let client = scope.spawn(|| {
            let mut answered = 0;
            while !stop.load(Ordering::Relaxed) {
                let reply = base.get("/search?q=switch%20traffic");
                assert_eq!(reply.status, 200, "{reply:?}");
                assert!(!reply.json["results"].as_array().unwrap().is_empty(), "{reply:?}");
                answered += 1;
            }
            answered
        });
        let mut rebuilt = pedestal_tests::read(artifacts::RANKER_KEYWORD);
        rebuilt.extend_from_slice(b"rebuilt");
        let headers = [("content-type", "application/octet-stream")];
        let upgraded = base.admin("POST", "/api/v1/modules?strategy=replace", &headers, Some(&rebuilt));
        assert_eq!(upgraded.status, 201, "{upgraded:?}");
        assert_eq!(base.uninstall("ranker-recency", "1.0.0").json["state"], "stopped");
        stop.store(true, Ordering::Relaxed);
        client.join().unwrap()
    });
    assert!(answered > 0);
    let after = base.get("/search?q=rust");
    let rankers: Vec<&str> =
        after.json["rankers"].as_array().unwrap().iter().map(|r| r["ranker"].as_str().unwrap()).collect();
    assert_eq!(rankers, ["ranker-keyword@1.0.0", "ranker-popularity@1.0.0"], "{after:?}");
}

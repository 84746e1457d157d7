//! The base's services for modules, against the real binary and `fx-services`: the key-value
//! store (namespaces, quota, persistence), configuration (file, environment, reload without
//! restart), events between modules, and module metrics.

use std::time::Duration;

use pedestal_tests::{TestBase, artifacts, eventually};
use serde_json::json;

fn put(base: &TestBase, module: &str, key: &str, value: &[u8]) -> pedestal_tests::Reply {
    base.traffic("PUT", &format!("/{module}/kv/{key}"), value)
}

#[test]
fn each_module_has_its_own_persistent_key_value_namespace() {
    let base = TestBase::start();
    base.install_as(artifacts::SERVICES, "shop");
    base.install_as(artifacts::SERVICES, "blog");
    assert_eq!(put(&base, "shop", "greeting", b"hello").status, 204);
    assert_eq!(put(&base, "shop", "goods:1", b"apple").status, 204);
    assert_eq!(put(&base, "shop", "goods:2", b"").status, 204, "an empty value is a value");
    assert_eq!(base.get("/shop/kv/greeting").body, "hello");
    assert_eq!(base.get("/shop/kv/goods:2").status, 200);
    assert_eq!(base.get("/shop/kv?prefix=goods:").json, json!(["goods:1", "goods:2"]));
    // Another module sees none of it, and its own key of the same name is its own.
    assert_eq!(base.get("/blog/kv/greeting").status, 404);
    assert_eq!(base.get("/blog/kv?prefix=").json, json!([]));
    assert_eq!(put(&base, "blog", "greeting", b"hi").status, 204);
    assert_eq!(base.get("/shop/kv/greeting").body, "hello");

    assert_eq!(base.traffic("DELETE", "/shop/kv/goods:1", b"").json, json!({"existed": true}));
    assert_eq!(base.traffic("DELETE", "/shop/kv/goods:1", b"").json, json!({"existed": false}));
    let usage = base.get("/shop/kv-usage").json;
    assert_eq!(usage["keys"], 2, "{usage}");
    assert_eq!(usage["used_bytes"], ("greeting".len() + "hello".len() + "goods:2".len()) as u64, "{usage}");
    assert_eq!(base.admin_get("/api/v1/modules/shop/kv").json["usage"], usage);

    // Durable: a crashed base, the module reinstalled later, still finds its keys.
    let base = base.kill_and_restart(&[]);
    assert_eq!(base.get("/shop/kv/greeting").body, "hello");
    assert_eq!(base.get("/blog/kv/greeting").body, "hi");
    assert_eq!(base.uninstall("shop", "0.1.0").status, 200);
    base.install_as(artifacts::SERVICES, "shop");
    assert_eq!(base.get("/shop/kv/greeting").body, "hello");
    assert_eq!(base.get("/shop/kv/last-stop").body, "clean", "the stop hook's write was answered");
}

#[test]
fn a_module_over_its_quota_is_refused_and_keeps_what_it_had() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pedestal.toml");
    std::fs::write(&config, "[modules.small]\nkv_quota_bytes = 100\n").unwrap();
    let base = TestBase::start_with(&["--config", config.to_str().unwrap(), "--kv-quota-bytes", "1000"]);
    base.install_as(artifacts::SERVICES, "small");
    base.install_as(artifacts::SERVICES, "large");
    assert_eq!(put(&base, "small", "a", &[b'x'; 60]).status, 204);
    let over = put(&base, "small", "b", &[b'x'; 60]);
    assert_eq!((over.status, over.json["code"].as_str()), (502, Some("KV_QUOTA_EXCEEDED")), "{over:?}");
    assert_eq!(base.get("/small/kv/b").status, 404, "the refused write left nothing");
    // Shrinking a value is always allowed; the neighbour has its own, larger quota.
    assert_eq!(put(&base, "small", "a", b"short").status, 204);
    assert_eq!(put(&base, "small", "b", &[b'x'; 60]).status, 204);
    assert_eq!(put(&base, "large", "a", &[b'x'; 600]).status, 204);
    assert_eq!(base.get("/small/kv-usage").json["quota_bytes"], 100);
    assert_eq!(base.get("/large/kv-usage").json["quota_bytes"], 1000);
}

#[test]
fn configuration_comes_from_file_and_environment_and_reloads_without_restart() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pedestal.toml");
    std::fs::write(
        &config,
        "[modules.fx-services.config]\ngreeting = \"hello\"\nsubscribe = [\"news\"]\ndb = { pool_size = 4, host = \"db1\" }\n",
    )
    .unwrap();
    let base = TestBase::start_with_env(
        &["--config", config.to_str().unwrap()],
        &[("PEDESTAL_CONFIG__FX_SERVICES__DB__HOST", "db-from-env"), ("PEDESTAL_CONFIG__OTHER__X", "1")],
    );
    base.install_ok(artifacts::SERVICES);
    // Handed over before the start hook ran.
    let at_start = base.get("/fx-services/config/at-start").json;
    assert_eq!(at_start["greeting"], "hello", "{at_start}");
    assert_eq!(
        at_start["db"],
        json!({"pool_size": 4, "host": "db-from-env"}),
        "the environment wins: {at_start}"
    );
    assert_eq!(base.get("/fx-services/config?key=db.pool_size").json["value"], 4);
    assert_eq!(base.admin_get("/api/v1/modules/fx-services/config").json["values"]["greeting"], "hello");

    // An edit of the file reaches the running module (watched), with no restart.
    let waiting = std::thread::scope(|scope| {
        let next = scope.spawn(|| base.get("/fx-services/config/next-change"));
        std::thread::sleep(Duration::from_millis(200));
        std::fs::write(&config, "[modules.fx-services.config]\ngreeting = \"bonjour\"\n").unwrap();
        next.join().unwrap()
    });
    assert_eq!(waiting.json["changed"], true, "{waiting:?}");
    assert_eq!(waiting.json["values"]["greeting"], "bonjour", "{waiting:?}");
    assert_eq!(waiting.json["values"]["db"], json!({"host": "db-from-env"}), "{waiting:?}");
    let generation = base.get("/fx-services/config?key=greeting").json;
    assert_eq!(generation["value"], "bonjour");

    // A broken edit changes nothing and says why; the explicit reload reports it.
    std::fs::write(&config, "[modules.fx-services.config\n").unwrap();
    let refused = base.admin("POST", "/api/v1/config/reload", &[], None);
    assert_eq!((refused.status, refused.code()), (500, "CONFIG_INVALID"), "{refused:?}");
    assert_eq!(base.get("/fx-services/config?key=greeting").json["value"], "bonjour");
    std::fs::write(&config, "[modules.fx-services.config]\ngreeting = \"hallo\"\n").unwrap();
    let reloaded = base.admin("POST", "/api/v1/config/reload", &[], None);
    assert_eq!(reloaded.status, 200, "{reloaded:?}");
    eventually("the new greeting", Duration::from_secs(5), || {
        (base.get("/fx-services/config?key=greeting").json["value"] == "hallo").then_some(())
    });
}

#[test]
fn events_published_by_one_module_reach_the_subscribers_of_others() {
    let base = TestBase::start();
    base.install_as(artifacts::SERVICES, "listener-a");
    base.install_as(artifacts::SERVICES, "listener-b");
    base.install_as(artifacts::SERVICES, "publisher");
    let published = base.traffic("POST", "/publisher/publish/greetings", br#"{"hello": 1}"#);
    // Every instance subscribed to `greetings` at start, the publisher included.
    assert_eq!(published.json, json!({"queued": 3}), "{published:?}");
    for listener in ["listener-a", "listener-b", "publisher"] {
        let received = eventually("the event", Duration::from_secs(5), || {
            let events = base.get(&format!("/{listener}/events")).json;
            (events.as_array().is_some_and(|e| !e.is_empty())).then_some(events)
        });
        assert_eq!(
            received,
            json!([{"topic": "greetings", "publisher": "publisher@0.1.0", "data": {"hello": 1}}]),
            "{listener}"
        );
    }
    // Order is kept per subscriber; the base can publish too.
    for n in 0..20 {
        base.traffic("POST", "/publisher/publish/greetings", format!("{n}").as_bytes());
    }
    base.admin(
        "POST",
        "/api/v1/events/greetings",
        &[("content-type", "application/json")],
        Some(b"\"from the base\""),
    );
    let events = eventually("all events", Duration::from_secs(5), || {
        let events = base.get("/listener-a/events").json;
        (events.as_array().unwrap().len() == 22).then_some(events)
    });
    let data: Vec<_> = events.as_array().unwrap()[1..21].iter().map(|e| e["data"].clone()).collect();
    assert_eq!(data, (0..20).map(|n| json!(n)).collect::<Vec<_>>());
    assert_eq!(events[21]["publisher"], "base");
    assert_eq!(base.admin_get("/api/v1/events").json["topics"]["greetings"], 3);

    // An unloaded subscriber stops receiving; nobody else notices.
    assert_eq!(base.uninstall("listener-b", "0.1.0").status, 200);
    let published = base.traffic("POST", "/publisher/publish/greetings", b"null");
    assert_eq!(published.json, json!({"queued": 2}), "{published:?}");
    assert_eq!(base.traffic("POST", "/publisher/publish/nobody-listens", b"1").json, json!({"queued": 0}));
}

#[test]
fn module_metrics_are_exported_with_module_tags() {
    let base = TestBase::start();
    base.install_as(artifacts::SERVICES, "shop");
    base.install_as(artifacts::SERVICES, "blog");
    for _ in 0..3 {
        put(&base, "shop", "k", b"12345");
    }
    put(&base, "blog", "k", b"1");
    base.traffic("POST", "/shop/level", b"42.5");
    let metrics = base.admin_get("/metrics").body;
    let series = |name: &str, module: &str| -> Option<f64> {
        let prefix = format!("{name}{{module=\"{module}\",version=\"0.1.0\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&prefix)).and_then(|v| v.parse().ok())
    };
    assert_eq!(series("fx_requests_total", "shop"), Some(3.0), "{metrics}");
    assert_eq!(series("fx_requests_total", "blog"), Some(1.0), "{metrics}");
    assert_eq!(series("fx_level", "shop"), Some(42.5), "{metrics}");
    assert_eq!(series("fx_body_bytes_sum", "shop"), Some(15.0), "{metrics}");
    assert_eq!(series("fx_body_bytes_count", "shop"), Some(3.0), "{metrics}");
    assert!(metrics.contains("# HELP fx_requests_total Requests the fixture served"), "{metrics}");
    // Reserved names, non-names and a kind conflict are refused with a clear code.
    assert_eq!(
        base.get("/shop/bad-metric").json,
        json!(["METRIC_REFUSED", "METRIC_REFUSED", "METRIC_REFUSED"])
    );
}

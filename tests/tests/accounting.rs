//! Per-instance accounting against the real binary: CPU, heap, leaks, status classes, latency,
//! and the Prometheus export.

use pedestal_tests::{TestBase, artifacts};

#[test]
fn cpu_time_is_attributed_to_the_module_that_burned_it() {
    let base = TestBase::start();
    base.install_ok(artifacts::CPU_BURNER);
    base.install_ok(artifacts::GOOD);
    assert_eq!(base.get("/fx-cpu-burner/burn?ms=400").body, "burned 400 ms");
    assert_eq!(base.get("/fx-good/ping").body, "pong");
    let cpu = |name: &str| {
        let cpu = base.admin_get(&format!("/api/v1/modules/{name}")).json["versions"][0]["cpu"].clone();
        cpu["user_ms"].as_u64().unwrap() + cpu["system_ms"].as_u64().unwrap()
    };
    let (burner, neighbour) = (cpu("fx-cpu-burner"), cpu("fx-good"));
    assert!(burner >= 250, "the burner's CPU time is {burner} ms");
    assert!(neighbour < 100, "the idle neighbour was charged {neighbour} ms");
}

#[test]
fn a_leaking_module_shows_growing_live_bytes_and_its_leak_at_unload() {
    let base = TestBase::start();
    base.install_ok(artifacts::LEAKY);
    let live = || {
        base.admin_get("/api/v1/modules/fx-leaky").json["versions"][0]["heap"]["live_bytes"].as_u64().unwrap()
    };
    let before = live();
    assert_eq!(base.get("/fx-leaky/leak?kib=1024").body, "leaked 1024 KiB");
    let after_one = live();
    assert_eq!(base.get("/fx-leaky/leak?kib=1024").body, "leaked 1024 KiB");
    let after_two = live();
    assert!(after_one >= before + 1024 * 1024, "{before} -> {after_one}");
    // Against `before`, not `after_one`: a reading can include a response buffer the module
    // frees only after the base has answered.
    assert!(after_two >= before + 2 * 1024 * 1024, "{before} -> {after_one} -> {after_two}");
    let peak =
        base.admin_get("/api/v1/modules/fx-leaky").json["versions"][0]["heap_peak_bytes"].as_u64().unwrap();
    assert!(peak >= after_two, "peak {peak} below live {after_two}");
    let removed = base.uninstall("fx-leaky", "0.1.0");
    assert_eq!(removed.json["state"], "stopped");
    let leaked = removed.json["leaked_bytes"].as_u64().unwrap();
    assert!(leaked >= 2 * 1024 * 1024, "leak reported as {leaked} bytes");
}

#[test]
fn status_classes_latency_and_durations_are_counted_and_exported() {
    let base = TestBase::start();
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::PANICKING);
    for _ in 0..3 {
        assert_eq!(base.get("/fx-good/ping").status, 200);
    }
    assert_eq!(base.get("/fx-good/no-such-route").status, 404);
    assert_eq!(base.get("/fx-panicking/boom").status, 500);

    let good = &base.admin_get("/api/v1/modules/fx-good").json["versions"][0];
    assert_eq!(good["traffic"]["requests"], 4);
    assert_eq!(good["traffic"]["client_errors"], 1);
    assert_eq!(good["traffic"]["server_errors"], 0);
    assert!(good["traffic"]["latency"]["p50_us"].as_u64().unwrap() > 0, "{good}");
    assert!(good["load_ms"].as_f64().unwrap() > 0.0 && good["start_ms"].as_f64().unwrap() >= 0.0, "{good}");
    assert!(good["cpu"]["threads"].as_u64().unwrap() >= 1, "{good}");

    let metrics = base.admin_get("/metrics");
    assert_eq!(metrics.status, 200);
    assert_eq!(metrics.header("content-type"), Some("text/plain; version=0.0.4"));
    let text = &metrics.body;
    let has = |line: &str| text.lines().any(|l| l == line);
    assert!(has(r#"pedestal_module_requests_total{module="fx-good",version="0.1.0"} 4"#), "{text}");
    assert!(has(r#"pedestal_module_responses_4xx_total{module="fx-good",version="0.1.0"} 1"#), "{text}");
    assert!(has(r#"pedestal_module_panics_total{module="fx-panicking",version="0.1.0"} 1"#), "{text}");
    assert!(has(r#"pedestal_module_responses_5xx_total{module="fx-panicking",version="0.1.0"} 1"#), "{text}");
    assert!(
        text.contains(
            r#"pedestal_module_request_duration_seconds_count{module="fx-good",version="0.1.0"} 4"#
        ),
        "{text}"
    );
    assert!(text.contains(r#"pedestal_module_heap_live_bytes{module="fx-good",version="0.1.0"}"#), "{text}");
    assert!(text.contains(r#"pedestal_module_cpu_user_seconds{module="fx-good",version="0.1.0"}"#), "{text}");
}

/// The ring of recent samples behind the console's charts and `pedestal top`: one per second
/// per live instance, each that second's rates (not the lifetime's), CPU charged to the module
/// that burned it, and a module's filter.
#[test]
fn recent_samples_show_each_seconds_rates_per_instance() {
    let base = TestBase::start();
    base.install_ok(artifacts::CPU_BURNER);
    base.install_ok(artifacts::GOOD);
    let first = base.admin_get("/api/v1/samples").json;
    assert_eq!((first["interval_ms"].as_u64(), first["kept"].as_u64()), (Some(1000), Some(300)), "{first}");
    let seen = pedestal_tests::eventually(
        "a busy second in the samples",
        std::time::Duration::from_secs(10),
        || {
            for _ in 0..20 {
                assert_eq!(base.get("/fx-good/ping").body, "pong");
            }
            assert_eq!(base.get("/fx-cpu-burner/burn?ms=300").body, "burned 300 ms");
            let samples = base.admin_get("/api/v1/samples").json;
            let of = |name: &str| -> Vec<serde_json::Value> {
                let instance =
                    samples["instances"].as_array().unwrap().iter().find(|i| i["name"] == name).cloned();
                instance.map(|i| i["samples"].as_array().unwrap().clone()).unwrap_or_default()
            };
            let good = of("fx-good").into_iter().find(|s| s["requests_per_s"].as_f64().unwrap() >= 5.0)?;
            let burner =
                of("fx-cpu-burner").into_iter().find(|s| s["cpu_percent"].as_f64().unwrap() >= 10.0)?;
            Some((good, burner))
        },
    );
    let (good, burner) = seen;
    assert!(good["p50_us"].as_u64().is_some() && good["p99_us"].as_u64().is_some(), "{good}");
    assert!(good["heap_bytes"].as_u64().unwrap() > 0, "{good}");
    assert!(good["cpu_percent"].as_f64().unwrap() < 50.0, "ping is cheap: {good}");
    assert!(burner["cpu_percent"].as_f64().unwrap() <= 100.0 * 1.5, "{burner}");
    let only = base.admin_get("/api/v1/samples?module=fx-good").json;
    let names: Vec<_> = only["instances"].as_array().unwrap().iter().map(|i| i["name"].clone()).collect();
    assert_eq!(names, [serde_json::json!("fx-good")]);
    let newest = good["at_ms"].as_u64().unwrap();
    let later = base.admin_get(&format!("/api/v1/samples?module=fx-good&since_ms={newest}")).json;
    assert!(
        later["instances"][0]["samples"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["at_ms"].as_u64().unwrap() > newest)
    );
    // An uninstalled instance's ring goes with it.
    base.uninstall("fx-good", "0.1.0");
    pedestal_tests::eventually("the ring dropped", std::time::Duration::from_secs(5), || {
        let samples = base.admin_get("/api/v1/samples?module=fx-good").json;
        samples["instances"].as_array().unwrap().is_empty().then_some(())
    });
}

//! The Grafana dashboard against the real binary: a base with modules and traffic, so that every
//! family the base exports has samples, passes `promtool check metrics` with nothing to say, and
//! every metric a PromQL expression of `deploy/grafana/pedestal-base.json` names is one that
//! scrape exported.
//!
//! `promtool` is Debian's `prometheus` package, which `cargo xtask test` installs; without it
//! this test fails (it never skips).

use std::{
    collections::BTreeSet,
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::Duration,
};

use pedestal_tests::{TestBase, artifacts, eventually};
use serde_json::{Value, json};

/// Every family the base exports. A new one belongs here too, so that its help text is checked
/// (promtool can only lint a family that has samples).
const FAMILIES: &[&str] = &[
    "pedestal_connections_accept_errors_total",
    "pedestal_connections_accepted_total",
    "pedestal_connections_open",
    "pedestal_connections_paused_total",
    "pedestal_connections_reclaimed_total",
    "pedestal_connections_timed_out_total",
    "pedestal_installs_total",
    "pedestal_instances",
    "pedestal_module_active",
    "pedestal_module_allocations_total",
    "pedestal_module_concurrency_limit",
    "pedestal_module_cpu_system_seconds",
    "pedestal_module_cpu_user_seconds",
    "pedestal_module_crashes_total",
    "pedestal_module_heap_live_bytes",
    "pedestal_module_heap_peak_bytes",
    "pedestal_module_load_seconds",
    "pedestal_module_log_lines_not_echoed_total",
    "pedestal_module_memory_limit_crossings_total",
    "pedestal_module_memory_soft_limit_bytes",
    "pedestal_module_panics_total",
    "pedestal_module_rejected_total",
    "pedestal_module_request_duration_seconds",
    "pedestal_module_requests_in_flight",
    "pedestal_module_requests_total",
    "pedestal_module_responses_4xx_total",
    "pedestal_module_responses_5xx_total",
    "pedestal_module_runaway_requests_total",
    "pedestal_module_start_seconds",
    "pedestal_module_tasks",
    "pedestal_module_threads",
    "pedestal_module_unhealthy_actions_total",
    "pedestal_unloads_total",
];

/// These bases run without the supervisor: the crash must end the process, so that the next
/// start finds it (`pedestal_module_crashes_total`).
const NO_SUPERVISOR: &[(&str, &str)] = &[("PEDESTAL_SUPERVISOR", "off")];

#[test]
fn the_exposition_passes_promtool_and_the_dashboard_uses_only_exported_metrics() {
    let promtool = promtool();
    let base = base_with_every_family();
    let scrape = base.admin_get("/metrics");
    assert_eq!(scrape.status, 200, "{scrape:?}");
    let text = scrape.body;

    let (status, said) = run(Command::new(&promtool).args(["check", "metrics"]), &text);
    assert!(status && said.is_empty(), "promtool check metrics said:\n{said}\nof:\n{text}");

    let families = exported_families(&text);
    let missing: Vec<&&str> = FAMILIES.iter().filter(|f| !families.contains_key(**f)).collect();
    assert!(missing.is_empty(), "not in the scrape: {missing:?}\n{text}");

    let dashboard = dashboard();
    check_importable(&dashboard);
    let exprs = exprs(&dashboard);
    assert!(exprs.len() >= 10, "{exprs:?}");
    check_parses(&promtool, &exprs);
    let selectable = selectable_names(&families);
    for expr in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "no metric in {expr:?}");
        for name in names {
            assert!(
                selectable.contains(&name),
                "{expr:?} uses {name}, which the base did not export:\n{text}"
            );
        }
    }
}

#[test]
fn metric_names_are_what_a_query_selects() {
    let check = |expr: &str, expected: &[&str]| {
        let expected: BTreeSet<String> = expected.iter().map(|s| s.to_string()).collect();
        assert_eq!(metric_names(expr), expected, "{expr}");
    };
    check("up", &["up"]);
    check(r#"sum by (module) (rate(a_total{module=~"x|y", b="}"}[5m]))"#, &["a_total"]);
    check(r#"max by (module, version) (d_seconds{quantile="0.99"}) > 0"#, &["d_seconds"]);
    check("sum(rate(x_sum[5m])) / sum without (le) (rate(x_count[1h:1m] offset 5m))", &["x_count", "x_sum"]);
    check(
        "clamp_min(deriv(cpu_seconds[5m]), 0) * on (instance) group_left (version) info",
        &["cpu_seconds", "info"],
    );
    check(r#"a and ignoring (x) b or c unless count(d) > bool 1e3"#, &["a", "b", "c", "d"]);
    check(r#"label_replace(m, "dst", "$1", "src", "(.*)")"#, &["m"]);
}

/// The `promtool` on `PATH`, or a failure saying how to get it.
fn promtool() -> String {
    let found =
        Command::new("promtool").arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(
        found.is_ok_and(|s| s.success()),
        "promtool is not on PATH: run `cargo xtask test`, which installs it (Debian's `prometheus` package)"
    );
    "promtool".to_owned()
}

/// A base whose scrape has a sample of every family: it found a crash of an earlier process at
/// its start, took an unhealthy action, runs modules with limits and module metrics, and served
/// 2xx, 4xx and 5xx answers.
fn base_with_every_family() -> TestBase {
    let mut base = TestBase::start_with_env(&[], NO_SUPERVISOR);
    base.install_ok(artifacts::GOOD);
    base.install_ok(artifacts::CRASHY);
    let crashed = ureq::get(&format!("{}/fx-crashy/abort", base.traffic)).call();
    assert!(crashed.is_err(), "the request dies with the base: {crashed:?}");
    assert!(base.wait_for_exit(Duration::from_secs(30)).is_some(), "the base did not die:\n{}", base.log());
    let unhealthy = ["--unhealthy-action", "deactivate", "--unhealthy-grace-ms", "300"];
    let base = base.restart_with_env(&unhealthy, NO_SUPERVISOR);

    base.install_ok(artifacts::PANICKING);
    base.install_ok(artifacts::SERVICES);
    base.install_ok(artifacts::LIMITED);
    base.install_as(artifacts::LIMITED, "sick");
    let limited = base.put_limits("fx-good", &json!({"memory_soft_limit_bytes": 256 * 1024 * 1024}));
    assert_eq!(limited.status, 200, "{limited:?}");

    for _ in 0..5 {
        assert_eq!(base.get("/fx-good/ping").body, "pong");
    }
    assert_eq!(base.get("/fx-good/no-such-route").status, 404);
    assert_eq!(base.get("/fx-panicking/boom").status, 500);
    assert_eq!(base.post("/fx-services/level", b"7").status, 204);
    // Over fx-limited's two concurrent requests: the third is refused.
    thread::scope(|scope| {
        let slow: Vec<_> =
            (0..3).map(|_| scope.spawn(|| base.get("/fx-limited/sleep?ms=200").status)).collect();
        let statuses: Vec<u16> = slow.into_iter().map(|t| t.join().unwrap()).collect();
        assert!(statuses.contains(&200), "{statuses:?}");
    });

    assert_eq!(base.get("/sick/sick?message=dashboards").body, "sick");
    eventually("sick deactivated", Duration::from_secs(10), || {
        let history = base.module("sick")["history"].clone();
        let last = history.as_array()?.last()?.clone();
        (last["state"] == "inactive" && last["reason"] == "unhealthy").then_some(())
    });
    base
}

/// Feeds `input` to `command`; whether it succeeded, and everything it wrote.
fn run(command: &mut Command, input: &str) -> (bool, String) {
    let mut child = command
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    child.stdin.take().unwrap().write_all(input.as_bytes()).expect("writing to promtool");
    let output = child.wait_with_output().expect("waiting for promtool");
    let said =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said.trim().to_owned())
}

/// The families of a scrape with their types, from its `# TYPE` lines.
fn exported_families(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.strip_prefix("# TYPE ")?.split(' ');
            Some((words.next()?.to_owned(), words.next()?.to_owned()))
        })
        .collect()
}

/// The names a query can select: each family, and the series a summary or a histogram renders
/// under suffixed names.
fn selectable_names(families: &std::collections::BTreeMap<String, String>) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (family, kind) in families {
        names.insert(family.clone());
        let suffixes: &[&str] = match kind.as_str() {
            "summary" => &["_sum", "_count"],
            "histogram" => &["_sum", "_count", "_bucket"],
            _ => &[],
        };
        names.extend(suffixes.iter().map(|suffix| format!("{family}{suffix}")));
    }
    names
}

fn dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/pedestal-base.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// What Grafana needs to import it: a schema version, a title, the two variables, and panels
/// placed on the grid whose queries go to the chosen data source.
fn check_importable(dashboard: &Value) {
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()), "title");
    let variables = dashboard["templating"]["list"].as_array().expect("templating.list");
    let variable = |name: &str| {
        variables.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("no variable {name}")).clone()
    };
    let datasource = variable("datasource");
    assert_eq!((&datasource["type"], &datasource["query"]), (&json!("datasource"), &json!("prometheus")));
    let module = variable("module");
    assert_eq!(module["type"], "query");
    assert!(module["query"]["query"].as_str().unwrap().starts_with("label_values("), "{module}");
    let panels = all_panels(dashboard);
    assert!(panels.iter().any(|p| p["type"] == "timeseries"), "no graph");
    let mut ids = BTreeSet::new();
    for panel in &panels {
        assert!(ids.insert(panel["id"].as_u64().expect("a panel id")), "panel id repeated: {panel}");
        let grid = &panel["gridPos"];
        for key in ["h", "w", "x", "y"] {
            assert!(grid[key].is_u64(), "gridPos.{key} of {}", panel["title"]);
        }
        assert!(grid["x"].as_u64().unwrap() + grid["w"].as_u64().unwrap() <= 24, "{}", panel["title"]);
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("no targets: {}", panel["title"]));
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            assert!(target["expr"].is_string() && target["refId"].is_string(), "{target}");
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{target}");
        }
    }
}

/// Every panel, those inside collapsed rows too.
fn all_panels(dashboard: &Value) -> Vec<Value> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel.clone());
        panels.extend(panel["panels"].as_array().into_iter().flatten().cloned());
    }
    panels
}

/// Every PromQL expression: the panels' targets and the query variables' `label_values(...)`
/// selectors, with Grafana's variables replaced by what they stand for.
fn exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = all_panels(dashboard)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["query"]["query"].as_str()
            && let Some(args) = query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')'))
            && let Some((selector, _label)) = args.rsplit_once(',')
        {
            exprs.push(selector.trim().to_owned());
        }
    }
    exprs.iter().map(|e| substitute(e)).collect()
}

/// Grafana's interval variables become a duration; any other variable the regex of "All".
fn substitute(expr: &str) -> String {
    let mut expr = expr.to_owned();
    for interval in ["$__rate_interval", "$__interval", "$__range"] {
        expr = expr.replace(interval, "5m");
    }
    for variable in ["${module}", "$module", "${base}", "$base"] {
        expr = expr.replace(variable, ".*");
    }
    assert!(!expr.contains('$'), "a variable left in {expr:?}");
    expr
}

/// Prometheus' own parser on every expression: each becomes a recording rule and
/// `promtool check rules` reads the file.
fn check_parses(promtool: &str, exprs: &[String]) {
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (n, expr) in exprs.iter().enumerate() {
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!("      - record: dashboard:expr_{n}\n        expr: {}\n", json!(expr)));
    }
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("dashboard-rules.yaml");
    std::fs::write(&file, &rules).unwrap();
    let (ok, said) = run(Command::new(promtool).arg("check").arg("rules").arg(&file), "");
    assert!(ok, "promtool check rules said:\n{said}\nof:\n{rules}");
}

/// The metric names a PromQL expression selects: identifiers that are neither functions,
/// aggregations or keywords, nor inside label matchers, ranges or grouping label lists.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Aggregations, binary operators and modifiers, and the literals `inf` and `nan`.
    const KEYWORDS: &str = "sum min max avg group stddev stdvar count count_values bottomk topk quantile \
                            limitk limit_ratio and or unless atan2 by without on ignoring group_left \
                            group_right offset bool inf nan";
    const LABEL_LISTS: &str = "by without on ignoring group_left group_right";
    let is = |list: &str, word: &str| list.split_whitespace().any(|k| k == word);
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut at = 0;
    while at < chars.len() {
        let c = chars[at];
        if c == '"' || c == '\'' || c == '`' {
            at = after_string(&chars, at);
        } else if c == '{' || c == '[' {
            at = after_closing(&chars, at);
        } else if c.is_ascii_digit() || (c == '.' && chars.get(at + 1).is_some_and(char::is_ascii_digit)) {
            // A number or a duration (`0.5`, `1e3`, `5m`).
            while at < chars.len() && (chars[at].is_ascii_alphanumeric() || chars[at] == '.') {
                at += 1;
            }
        } else if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let start = at;
            while chars.get(at).is_some_and(|&c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
                at += 1;
            }
            let word: String = chars[start..at].iter().collect();
            let mut next = at;
            while next < chars.len() && chars[next].is_whitespace() {
                next += 1;
            }
            let calls = chars.get(next) == Some(&'(');
            if is(LABEL_LISTS, &word) && calls {
                at = after_closing(&chars, next);
            } else if !calls && !is(KEYWORDS, &word) {
                names.insert(word);
            }
        } else {
            at += 1;
        }
    }
    names
}

/// The index after the string literal that starts at `at`.
fn after_string(chars: &[char], at: usize) -> usize {
    let quote = chars[at];
    let mut i = at + 1;
    while i < chars.len() && chars[i] != quote {
        i += if chars[i] == '\\' && quote != '`' { 2 } else { 1 };
    }
    i + 1
}

/// The index after the bracket that closes the one at `at` (strings inside skipped).
fn after_closing(chars: &[char], at: usize) -> usize {
    let (open, close) = match chars[at] {
        '{' => ('{', '}'),
        '[' => ('[', ']'),
        _ => ('(', ')'),
    };
    let (mut depth, mut i) = (0, at);
    while i < chars.len() {
        match chars[i] {
            '"' | '\'' | '`' => {
                i = after_string(chars, i);
                continue;
            }
            c if c == open => depth += 1,
            c if c == close => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    panic!("unclosed {open} in {:?}", chars.iter().collect::<String>());
}

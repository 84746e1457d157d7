//! What the commands print for people: pure functions from the API's answers (and the time
//! now, for ages) to text, so each is tested on its own with a `check(actual, expected)`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    time::{Duration, SystemTime},
};

use pedestal_fleet::{
    model::format_duration,
    render::{
        Cell, Style, Table, health_style, human_bytes, human_duration, human_micros, printable, state_style,
    },
};

use super::answers::{
    Health, Instance, InstanceHealth, Limits, LimitsPage, LogLine, ModuleList, ModulePage, Problem, Spis,
    Weights,
};

/// `pedestal ls`: one row per instance and per quarantined artifact, then a line for each that
/// needs an operator (so they stand out without colour too). `splits` holds the traffic weights
/// of the modules that have some.
pub fn render_list(
    list: &ModuleList,
    splits: &BTreeMap<String, Weights>,
    now: SystemTime,
    color: bool,
) -> String {
    if list.modules.is_empty() && list.quarantined.is_empty() {
        return "no modules: install one with `pedestal install FILE.so`\n".to_owned();
    }
    let mut table = Table::new(&[
        "MODULE", "VERSION", "STATE", "TRAFFIC", "REQUESTS", "5XX", "P99", "HEAP", "CPU", "UPTIME",
    ]);
    let mut notes = Vec::new();
    for instance in &list.modules {
        let mut row = vec![Cell::plain(&instance.name), Cell::plain(&instance.version)];
        row.extend(instance_cells(instance, splits.get(&instance.name), now));
        table.row(row);
        if matches!(instance.state.as_str(), "broken" | "pinned") {
            notes.push((
                format!(
                    "{}@{} is {}: `pedestal show {}` says why",
                    instance.name, instance.version, instance.state, instance.name
                ),
                Style::Bad,
            ));
        }
    }
    for quarantined in &list.quarantined {
        let version = quarantined.version.clone().unwrap_or_else(|| "-".into());
        let mut row = vec![
            Cell::plain(quarantined.module()),
            Cell::plain(&version),
            Cell::new("quarantined", Style::Bad),
        ];
        row.extend((0..7).map(|_| Cell::plain("-")));
        table.row(row);
        let retry = match &quarantined.version {
            Some(version) => format!("; `pedestal retry {}@{version}` loads it again", quarantined.module()),
            None => String::new(),
        };
        notes.push((
            format!("{} quarantined: {}{retry}", quarantined.module(), quarantined.reason),
            Style::Bad,
        ));
    }
    for (note, style) in notes {
        table.note(note, style);
    }
    table.render(color)
}

/// The cells from STATE to UPTIME of one instance.
fn instance_cells(instance: &Instance, split: Option<&Weights>, now: SystemTime) -> Vec<Cell> {
    let traffic = &instance.traffic;
    let p99 = traffic.latency.as_ref().and_then(|l| l.p99_us);
    let live = matches!(instance.state.as_str(), "active" | "inactive" | "starting" | "stopping" | "pinned");
    vec![
        Cell::new(&instance.state, state_style(&instance.state)),
        traffic_cell(instance, split),
        Cell::plain(traffic.requests.to_string()),
        Cell::new(
            traffic.server_errors.to_string(),
            if traffic.server_errors > 0 { Style::Warn } else { Style::Plain },
        ),
        Cell::plain(p99.map_or("-".to_owned(), human_micros)),
        Cell::new(
            instance.heap.as_ref().map_or("-".to_owned(), |h| human_bytes(h.live_bytes)),
            if instance.over_memory_limit { Style::Bad } else { Style::Plain },
        ),
        Cell::plain(human_duration(Duration::from_millis(instance.cpu.total_ms()))),
        Cell::plain(if live { age(&instance.installed_at, now) } else { "-".to_owned() }),
    ]
}

/// `active`, `-`, or under traffic weights each version's share (`active 90%`, `10%`).
fn traffic_cell(instance: &Instance, split: Option<&Weights>) -> Cell {
    match split.filter(|s| !s.weights.is_empty()) {
        Some(split) => {
            let total: u64 = split.weights.values().sum();
            let share = share(split.weights.get(&instance.version).copied().unwrap_or(0), total);
            if instance.active {
                Cell::new(format!("active {share}"), Style::Good)
            } else {
                Cell::plain(share)
            }
        }
        None if instance.active => Cell::new("active", Style::Good),
        None => Cell::plain("-"),
    }
}

/// `weight` of `total` in percent: `90%`, `33.3%`.
fn share(weight: u64, total: u64) -> String {
    if total == 0 {
        return "0%".to_owned();
    }
    let percent = weight as f64 * 100.0 / total as f64;
    if percent.fract() == 0.0 { format!("{percent}%") } else { format!("{percent:.1}%") }
}

/// How long ago an RFC 3339 time was (`-` when it does not parse).
fn age(at: &str, now: SystemTime) -> String {
    humantime::parse_rfc3339(at)
        .ok()
        .map_or("-".to_owned(), |then| human_duration(now.duration_since(then).unwrap_or_default()))
}

/// `pedestal show MODULE`: the versions side by side, then each version's history, limits
/// (with their sources) and health, then what the module left behind (quarantined artifacts,
/// crashes, retired instances).
pub fn render_module(
    page: &ModulePage,
    split: Option<&Weights>,
    health: &Health,
    now: SystemTime,
    color: bool,
) -> String {
    let mut out = String::new();
    let active = page.active_version.as_deref().unwrap_or("none");
    let _ = write!(out, "{}: active version {active}", page.name);
    if let Some(split) = split.filter(|s| !s.weights.is_empty()) {
        let _ = write!(out, ", traffic split {}", weights_line(split));
    }
    out.push('\n');
    let health_of = |version: &str| -> Option<&InstanceHealth> {
        health.modules.iter().find(|h| h.module == page.name && h.version == version)
    };
    let problem_of = |version: &str| -> Option<&Problem> {
        let id = format!("{}@{version}", page.name);
        health.problems.iter().find(|p| p.module == id)
    };
    if !page.versions.is_empty() {
        out.push('\n');
        let mut table = Table::new(&[
            "VERSION", "STATE", "TRAFFIC", "HEALTH", "REQUESTS", "5XX", "P99", "HEAP", "CPU", "UPTIME",
        ]);
        for instance in &page.versions {
            let mut cells = instance_cells(instance, split, now);
            let verdict = health_of(&instance.version).map_or("-", |h| h.status.as_str());
            cells.insert(2, Cell::new(verdict, health_style(verdict)));
            cells.insert(0, Cell::plain(&instance.version));
            table.row(cells);
        }
        out.push_str(&table.render(color));
    }
    // Limits are set per module: shown once when every version has the same.
    let same_limits = page.versions.windows(2).all(|pair| pair[0].limits == pair[1].limits);
    if same_limits && let Some(limits) = page.versions.first().and_then(|i| i.limits.as_ref()) {
        out.push_str(if page.versions.len() > 1 { "\nlimits (every version)\n" } else { "\nlimits\n" });
        out.push_str(&indent(&limits_table(limits).render(color), "  "));
    }
    for instance in &page.versions {
        let _ = writeln!(
            out,
            "\n{}@{}  sha256 {}  interface {}  {}  installed {}",
            page.name,
            instance.version,
            short_sha(&instance.sha256),
            instance.interface_version,
            instance.signed_by.as_ref().map_or("unsigned".to_owned(), |key| format!("signed by {key}")),
            instance.installed_at,
        );
        let traffic = &instance.traffic;
        let latency = traffic.latency.as_ref();
        let micros = |us: Option<u64>| us.map_or("-".to_owned(), human_micros);
        let _ = writeln!(
            out,
            "  traffic   {} requests, {} 4xx, {} 5xx, {} panics, {} refused, {} in flight; p50 {} p99 {}",
            traffic.requests,
            traffic.client_errors,
            traffic.server_errors,
            traffic.panics,
            traffic.rejected,
            traffic.in_flight,
            micros(latency.and_then(|l| l.p50_us)),
            micros(latency.and_then(|l| l.p99_us)),
        );
        let _ = writeln!(
            out,
            "  heap      {} live, {} peak{}",
            instance.heap.as_ref().map_or("-".to_owned(), |h| human_bytes(h.live_bytes)),
            human_bytes(instance.heap_peak_bytes),
            if instance.over_memory_limit { ", over its soft limit" } else { "" },
        );
        for (label, spis) in [("provides", &instance.provides), ("requires", &instance.requires)] {
            if !spis.is_empty() {
                let list: Vec<String> = spis.iter().map(|(spi, v)| format!("{spi} {v}")).collect();
                let _ = writeln!(out, "  {label:<9} {}", list.join(", "));
            }
        }
        match (health_of(&instance.version), problem_of(&instance.version)) {
            (Some(verdict), _) => {
                let style = health_style(&verdict.status);
                let reasons = if verdict.reasons.is_empty() {
                    String::new()
                } else {
                    format!(": {}", printable(&verdict.reasons.join("; ")))
                };
                let _ = writeln!(out, "  health    {}{reasons}", style.paint(&verdict.status, color));
            }
            (None, Some(problem)) => {
                let why =
                    problem.message.as_deref().or(problem.reason.as_deref()).unwrap_or("no reason recorded");
                let why = printable(why);
                let _ = writeln!(out, "  health    {}: {why}", Style::Bad.paint(&problem.state, color));
            }
            (None, None) => {}
        }
        if let Some(limits) = instance.limits.as_ref().filter(|_| !same_limits) {
            out.push_str("  limits\n");
            out.push_str(&indent(&limits_table(limits).render(color), "    "));
        }
        if !instance.history.is_empty() {
            out.push_str("  history\n");
            let mut table = Table::new(&["AT", "STATE", "REASON", "MESSAGE"]);
            for step in &instance.history {
                table.row(vec![
                    Cell::plain(&step.at),
                    Cell::new(&step.state, state_style(&step.state)),
                    Cell::plain(&step.reason),
                    Cell::plain(&step.message),
                ]);
            }
            out.push_str(&indent(&table.render(color), "    "));
        }
    }
    if !page.quarantined.is_empty() {
        out.push_str("\nquarantined\n");
        for q in &page.quarantined {
            let version = q.version.as_deref().unwrap_or("?");
            let _ = writeln!(
                out,
                "  {}  sha256 {}  since {}: {}",
                Style::Bad.paint(&format!("{}@{version}", q.module()), color),
                short_sha(&q.sha256),
                q.at,
                q.reason
            );
        }
    }
    if !page.crashes.is_empty() {
        out.push_str("\ncrashes\n");
        for crash in &page.crashes {
            let cleared = if crash.cleared { " (cleared by a retry)" } else { "" };
            let _ = writeln!(
                out,
                "  {}  {}  {} (attributed by {}){cleared}",
                crash.at,
                crash.version.as_deref().unwrap_or("?"),
                crash.description,
                crash.attributed_by,
            );
        }
    }
    if !page.retired.is_empty() {
        out.push_str("\nretired\n");
        let mut table =
            Table::new(&["VERSION", "STATE", "INSTALLED", "RETIRED", "REQUESTS", "5XX", "LEAKED"]);
        for retired in &page.retired {
            table.row(vec![
                Cell::plain(&retired.version),
                Cell::new(&retired.state, state_style(&retired.state)),
                Cell::plain(&retired.installed_at),
                Cell::plain(&retired.retired_at),
                Cell::plain(retired.traffic.requests.to_string()),
                Cell::plain(retired.traffic.server_errors.to_string()),
                Cell::plain(retired.leaked_bytes.map_or("-".to_owned(), human_bytes)),
            ]);
        }
        out.push_str(&indent(&table.render(color), "  "));
    }
    out
}

/// The first 12 hex digits of a sha256: enough to tell builds apart on a screen.
fn short_sha(sha256: &str) -> &str {
    sha256.get(..12).unwrap_or(sha256)
}

fn indent(text: &str, prefix: &str) -> String {
    text.lines().map(|line| format!("{prefix}{line}\n")).collect()
}

/// A module's effective limits, one per row, each with its source (`default`, `manifest`,
/// `config`, `api`). Durations read back the way the flags take them (`300ms`, `30s`).
pub fn limits_table(limits: &Limits) -> Table {
    let count =
        |n: Option<u64>| n.map_or("none".to_owned(), |n| if n == 0 { "none".into() } else { n.to_string() });
    let bytes = |n: Option<u64>| match n {
        None | Some(0) => "none".to_owned(),
        Some(n) => format!("{} ({n})", human_bytes(n)),
    };
    let ms = |n: Option<u64>| n.map_or("none".to_owned(), format_duration);
    let text = |t: &Option<String>| t.clone().unwrap_or_else(|| "-".into());
    let rows = [
        ("max_concurrent_requests", count(limits.max_concurrent_requests)),
        ("request_timeout_ms", ms(limits.request_timeout_ms)),
        ("max_request_body_bytes", bytes(limits.max_request_body_bytes)),
        ("memory_soft_limit_bytes", bytes(limits.memory_soft_limit_bytes)),
        ("memory_action", text(&limits.memory_action)),
        ("unhealthy_action", text(&limits.unhealthy_action)),
        ("unhealthy_grace_ms", ms(limits.unhealthy_grace_ms)),
    ];
    let mut table = Table::new(&["LIMIT", "VALUE", "SOURCE"]);
    for (name, value) in rows {
        let source = limits.sources.get(name).map_or("-", String::as_str);
        let style = if source == "api" { Style::Warn } else { Style::Plain };
        table.row(vec![Cell::plain(name), Cell::plain(value), Cell::new(source, style)]);
    }
    table
}

/// `pedestal limits MODULE`: the effective limits, once when every version has the same, else
/// per version; then what the API overrides.
pub fn render_limits(page: &LimitsPage, color: bool) -> String {
    let mut out = String::new();
    let same = page.versions.windows(2).all(|pair| pair[0].limits == pair[1].limits);
    match page.versions.as_slice() {
        [] => {
            let _ = writeln!(out, "{}: no live version", page.module);
        }
        [first, ..] if same => {
            let versions: Vec<&str> = page.versions.iter().map(|v| v.version.as_str()).collect();
            let _ = writeln!(out, "{} {}", page.module, versions.join(", "));
            out.push_str(&limits_table(&first.limits).render(color));
        }
        versions => {
            for (i, version) in versions.iter().enumerate() {
                let _ = writeln!(out, "{}{}@{}", if i > 0 { "\n" } else { "" }, page.module, version.version);
                out.push_str(&limits_table(&version.limits).render(color));
            }
        }
    }
    let set: Vec<String> = page
        .overrides
        .iter()
        .filter(|(_, value)| !value.is_null())
        .map(|(name, value)| format!("{name}={value}"))
        .collect();
    if !set.is_empty() {
        let _ = writeln!(out, "set through the API: {}", set.join(" "));
    }
    out
}

/// `1.0.0=90 (90%), 1.1.0=10 (10%)`.
pub fn weights_line(split: &Weights) -> String {
    let total: u64 = split.weights.values().sum();
    let parts: Vec<String> =
        split.weights.iter().map(|(version, w)| format!("{version}={w} ({})", share(*w, total))).collect();
    parts.join(", ")
}

/// `pedestal traffic MODULE`: where its traffic goes.
pub fn render_weights(module: &str, split: &Weights) -> String {
    let active = split.active_version.as_deref().unwrap_or("none");
    if split.weights.is_empty() {
        return format!("{module}: every request goes to the active version, {active}\n");
    }
    format!("{module}: {} (active version {active})\n", weights_line(split))
}

/// `pedestal health`: the verdict and counts, each running instance's health, then what needs
/// an operator and the recent crashes.
pub fn render_health(health: &Health, color: bool) -> String {
    let mut out = String::new();
    let order = ["active", "inactive", "starting", "stopping", "broken", "pinned", "quarantined", "stopped"];
    let counts: Vec<String> = order
        .iter()
        .filter_map(|state| health.counts.get(*state).filter(|n| **n > 0).map(|n| format!("{n} {state}")))
        .collect();
    let _ = writeln!(
        out,
        "base {}{}, interface {}{}",
        health_style(&health.status).paint(&health.status, color),
        if health.ready { "" } else { " (not ready: restoring its state)" },
        health.interface_version,
        if counts.is_empty() { String::new() } else { format!(": {}", counts.join(", ")) },
    );
    if !health.modules.is_empty() {
        let mut table = Table::new(&["MODULE", "VERSION", "STATE", "HEALTH", "REASONS"]);
        for module in &health.modules {
            table.row(vec![
                Cell::plain(&module.module),
                Cell::plain(&module.version),
                Cell::new(&module.state, state_style(&module.state)),
                Cell::new(&module.status, health_style(&module.status)),
                Cell::plain(module.reasons.join("; ")),
            ]);
        }
        out.push_str(&table.render(color));
    }
    if !health.problems.is_empty() {
        out.push_str("needs an operator\n");
        for problem in &health.problems {
            let why =
                problem.message.as_deref().or(problem.reason.as_deref()).unwrap_or("no reason recorded");
            let (module, why) = (printable(&problem.module), printable(why));
            let _ = writeln!(out, "  {module} {}: {why}", Style::Bad.paint(&problem.state, color));
        }
    }
    if !health.crashes.is_empty() {
        out.push_str("crashes\n");
        for crash in &health.crashes {
            let module = match (&crash.name, &crash.version) {
                (Some(name), Some(version)) => format!("{name}@{version}"),
                _ => "an unknown module".to_owned(),
            };
            let _ = writeln!(out, "  {}  {module}  {}", crash.at, crash.description);
        }
    }
    out
}

/// `pedestal spis`: each SPI the base declares or a running module implements or requires.
pub fn render_spis(spis: &Spis, color: bool) -> String {
    let names: BTreeSet<&String> =
        spis.declared.keys().chain(spis.implemented.keys()).chain(spis.required.keys()).collect();
    if names.is_empty() {
        return "no SPIs: the base declares none, and no running module implements or requires one\n"
            .to_owned();
    }
    let modules = |list: Option<&Vec<super::answers::SpiModule>>| {
        let list: Vec<String> = list
            .into_iter()
            .flatten()
            .map(|m| {
                let inactive = if m.active == Some(false) { " inactive" } else { "" };
                format!("{} ({}){inactive}", m.module, m.spi_version)
            })
            .collect();
        if list.is_empty() { "-".to_owned() } else { list.join(", ") }
    };
    let mut table = Table::new(&["SPI", "DECLARED", "IMPLEMENTED BY", "REQUIRED BY"]);
    for name in names {
        let declared = spis.declared.get(name).map_or("-", String::as_str);
        let implemented = modules(spis.implemented.get(name));
        let missing = implemented == "-" && spis.required.contains_key(name);
        table.row(vec![
            Cell::plain(name.as_str()),
            Cell::plain(declared),
            Cell::new(implemented, if missing { Style::Bad } else { Style::Plain }),
            Cell::plain(modules(spis.required.get(name))),
        ]);
    }
    table.render(color)
}

/// One module log line: `time level [version] message fields`.
pub fn render_log_line(line: &LogLine, color: bool) -> String {
    let style = match line.level.as_str() {
        "error" => Style::Bad,
        "warn" => Style::Warn,
        "debug" | "trace" => Style::Dim,
        _ => Style::Plain,
    };
    let level = style.paint(&format!("{:<5}", line.level), color);
    let mut text = format!("{} {level} [{}] {}", line.at, printable(&line.version), printable(&line.message));
    if !line.fields.is_empty() {
        text.push(' ');
        text.push_str(&printable(&line.fields));
    }
    text
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn check(actual: String, expected: &str) {
        assert_eq!(actual, expected, "\nactual:\n{actual}\nexpected:\n{expected}");
    }

    fn now() -> SystemTime {
        humantime::parse_rfc3339("2026-12-03T18:47:36.632Z").unwrap()
    }

    /// A listing as the base answers it, trimmed to what the table shows.
    fn listing() -> ModuleList {
        serde_json::from_value(json!({
            "modules": [
                {"name": "fx-good", "version": "0.1.0", "state": "active", "active": true,
                 "installed_at": "2026-12-03T18:42:33.180Z", "heap": {"live_bytes": 31204},
                 "cpu": {"user_ms": 10, "system_ms": 2},
                 "traffic": {"requests": 20, "server_errors": 0, "latency": {"p50_us": 256, "p99_us": 512}}},
                {"name": "fx-versioned", "version": "1.0.0", "state": "active", "active": true,
                 "installed_at": "2026-12-03T18:42:36.632Z", "heap": {"live_bytes": 29347},
                 "traffic": {"requests": 9, "server_errors": 3, "latency": {"p99_us": 1536}}},
                {"name": "fx-versioned", "version": "1.1.0", "state": "inactive", "active": false,
                 "installed_at": "2026-12-03T16:40:00.000Z", "heap": {"live_bytes": 29347},
                 "traffic": {"requests": 1, "latency": null}},
                {"name": "fx-hangs", "version": "0.1.0", "state": "broken", "active": false,
                 "installed_at": "2026-12-03T18:40:00.000Z", "heap": null, "traffic": {}},
                {"name": "fx-blocks", "version": "0.1.0", "state": "pinned", "active": false,
                 "installed_at": "2026-12-03T18:47:00.000Z", "heap": null, "traffic": {}}
            ],
            "quarantined": [
                {"name": "fx-crashy", "version": "0.1.0", "sha256": "ab".repeat(32),
                 "reason": "crashed the base with SIGABRT", "at": "2026-12-03T18:45:00.000Z"}
            ]
        }))
        .unwrap()
    }

    #[test]
    fn the_listing_is_one_aligned_table_and_problems_stand_out() {
        let splits = BTreeMap::from([(
            "fx-versioned".to_owned(),
            Weights {
                active_version: Some("1.0.0".into()),
                weights: BTreeMap::from([("1.0.0".into(), 3), ("1.1.0".into(), 1)]),
            },
        )]);
        check(
            render_list(&listing(), &splits, now(), false),
            "\
MODULE        VERSION  STATE        TRAFFIC     REQUESTS  5XX  P99    HEAP      CPU   UPTIME
fx-good       0.1.0    active       active      20        0    512µs  30.5 KiB  12ms  5m 03s
fx-versioned  1.0.0    active       active 75%  9         3    1.5ms  28.7 KiB  0ms   5m 00s
fx-versioned  1.1.0    inactive     25%         1         0    -      28.7 KiB  0ms   2h 07m
fx-hangs      0.1.0    broken       -           0         0    -      -         0ms   -
fx-blocks     0.1.0    pinned       -           0         0    -      -         0ms   36.6s
fx-crashy     0.1.0    quarantined  -           -         -    -      -         -     -
fx-hangs@0.1.0 is broken: `pedestal show fx-hangs` says why
fx-blocks@0.1.0 is pinned: `pedestal show fx-blocks` says why
fx-crashy quarantined: crashed the base with SIGABRT; `pedestal retry fx-crashy@0.1.0` loads it again
",
        );
    }

    #[test]
    fn colour_marks_what_needs_an_operator() {
        let coloured = render_list(&listing(), &BTreeMap::new(), now(), true);
        for state in ["broken", "pinned", "quarantined"] {
            assert!(coloured.contains(&format!("\x1b[31m{state}\x1b[0m")), "{state}: {coloured}");
        }
        assert!(coloured.contains("\x1b[32mactive\x1b[0m"), "{coloured}");
        assert!(!render_list(&listing(), &BTreeMap::new(), now(), false).contains('\x1b'));
    }

    #[test]
    fn an_empty_base_says_what_to_do() {
        check(
            render_list(&ModuleList::default(), &BTreeMap::new(), now(), false),
            "no modules: install one with `pedestal install FILE.so`\n",
        );
    }

    #[test]
    fn shares_of_weights() {
        assert_eq!(share(90, 100), "90%");
        assert_eq!(share(1, 3), "33.3%");
        assert_eq!(share(0, 0), "0%");
        let split = Weights {
            active_version: Some("1.0.0".into()),
            weights: BTreeMap::from([("1.0.0".into(), 9), ("1.1.0".into(), 1)]),
        };
        check(render_weights("m", &split), "m: 1.0.0=9 (90%), 1.1.0=1 (10%) (active version 1.0.0)\n");
        check(
            render_weights("m", &Weights { active_version: Some("1.0.0".into()), weights: BTreeMap::new() }),
            "m: every request goes to the active version, 1.0.0\n",
        );
    }

    #[test]
    fn limits_show_their_sources() {
        let limits: Limits = serde_json::from_value(json!({
            "max_concurrent_requests": 2, "request_timeout_ms": 300, "max_request_body_bytes": 1024,
            "memory_soft_limit_bytes": null, "memory_action": "log", "unhealthy_action": "none",
            "unhealthy_grace_ms": 30000,
            "sources": {"max_concurrent_requests": "api", "request_timeout_ms": "manifest",
                        "max_request_body_bytes": "manifest", "memory_soft_limit_bytes": "default",
                        "memory_action": "default", "unhealthy_action": "default", "unhealthy_grace_ms": "default"}
        }))
        .unwrap();
        check(
            limits_table(&limits).render(false),
            "\
LIMIT                    VALUE           SOURCE
max_concurrent_requests  2               api
request_timeout_ms       300ms           manifest
max_request_body_bytes   1.0 KiB (1024)  manifest
memory_soft_limit_bytes  none            default
memory_action            log             default
unhealthy_action         none            default
unhealthy_grace_ms       30s             default
",
        );
    }

    #[test]
    fn a_module_page_has_versions_history_limits_and_health() {
        let page: ModulePage = serde_json::from_value(json!({
            "name": "fx-limited", "active_version": "0.1.0",
            "versions": [{
                "name": "fx-limited", "version": "0.1.0", "state": "active", "active": true,
                "sha256": "6694c10f237bffed2974b18baa1f2bd8f7f9c2c0ff2b5825cb1b8c1391c44c46",
                "interface_version": "1.3.0", "installed_at": "2026-12-03T18:42:33.256Z",
                "heap": {"live_bytes": 30587}, "heap_peak_bytes": 30587,
                "traffic": {"requests": 20, "server_errors": 20, "latency": {"p50_us": 256, "p99_us": 1024}},
                "limits": {"max_concurrent_requests": 2, "request_timeout_ms": 300,
                           "max_request_body_bytes": 1024, "memory_action": "log",
                           "unhealthy_action": "none", "unhealthy_grace_ms": 30000,
                           "sources": {"max_concurrent_requests": "manifest"}},
                "history": [
                    {"at": "2026-12-03T18:42:33.256Z", "state": "installing", "reason": "install",
                     "message": "library loaded and checked"},
                    {"at": "2026-12-03T18:42:33.257Z", "state": "active", "reason": "install",
                     "message": "started and receiving traffic"}
                ]
            }],
            "quarantined": [], "crashes": [],
            "retired": [{"version": "0.0.9", "state": "stopped", "installed_at": "2026-12-03T18:00:00.000Z",
                         "retired_at": "2026-12-03T18:42:00.000Z", "leaked_bytes": 0,
                         "traffic": {"requests": 5}}]
        }))
        .unwrap();
        let health: Health = serde_json::from_value(json!({
            "status": "degraded", "modules": [{
                "module": "fx-limited", "version": "0.1.0", "state": "active", "status": "unhealthy",
                "reasons": ["20 of 20 requests in the last 60 s failed with 5xx (100%)"]
            }]
        }))
        .unwrap();
        check(
            render_module(&page, None, &health, now(), false),
            "\
fx-limited: active version 0.1.0

VERSION  STATE   TRAFFIC  HEALTH     REQUESTS  5XX  P99    HEAP      CPU  UPTIME
0.1.0    active  active   unhealthy  20        20   1.0ms  29.9 KiB  0ms  5m 03s

limits
  LIMIT                    VALUE           SOURCE
  max_concurrent_requests  2               manifest
  request_timeout_ms       300ms           -
  max_request_body_bytes   1.0 KiB (1024)  -
  memory_soft_limit_bytes  none            -
  memory_action            log             -
  unhealthy_action         none            -
  unhealthy_grace_ms       30s             -

fx-limited@0.1.0  sha256 6694c10f237b  interface 1.3.0  unsigned  installed 2026-12-03T18:42:33.256Z
  traffic   20 requests, 0 4xx, 20 5xx, 0 panics, 0 refused, 0 in flight; p50 256µs p99 1.0ms
  heap      29.9 KiB live, 29.9 KiB peak
  health    unhealthy: 20 of 20 requests in the last 60 s failed with 5xx (100%)
  history
    AT                        STATE       REASON   MESSAGE
    2026-12-03T18:42:33.256Z  installing  install  library loaded and checked
    2026-12-03T18:42:33.257Z  active      install  started and receiving traffic

retired
  VERSION  STATE    INSTALLED                 RETIRED                   REQUESTS  5XX  LEAKED
  0.0.9    stopped  2026-12-03T18:00:00.000Z  2026-12-03T18:42:00.000Z  5         0    0 B
",
        );
    }

    #[test]
    fn spis_name_who_implements_and_who_requires() {
        let spis: Spis = serde_json::from_value(json!({
            "declared": {"echo": "1.1.0"},
            "implemented": {"echo": [{"module": "fx-echo@0.1.0", "spi_version": "1.1.0", "active": true}]},
            "required": {"echo": [{"module": "fx-echo-caller@0.1.0", "spi_version": "1.1.0"}],
                         "ranker": [{"module": "search@1.0.0", "spi_version": "1.0.0"}]}
        }))
        .unwrap();
        check(
            render_spis(&spis, false),
            "\
SPI     DECLARED  IMPLEMENTED BY         REQUIRED BY
echo    1.1.0     fx-echo@0.1.0 (1.1.0)  fx-echo-caller@0.1.0 (1.1.0)
ranker  -         -                      search@1.0.0 (1.0.0)
",
        );
        assert!(render_spis(&Spis::default(), false).starts_with("no SPIs"));
    }

    #[test]
    fn log_lines_read_like_the_module_log() {
        let line = LogLine {
            at: "2026-12-03T18:43:04.083Z".into(),
            level: "info".into(),
            version: "0.1.0".into(),
            message: "fixture tracing line".into(),
            fields: "answer=42".into(),
            ..LogLine::default()
        };
        check(
            render_log_line(&line, false),
            "2026-12-03T18:43:04.083Z info  [0.1.0] fixture tracing line answer=42",
        );
    }
}

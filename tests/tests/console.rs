//! The web console in a real browser: Debian's headless Chromium driven through ChromeDriver
//! (WebDriver, with `fantoccini`), against the real `pedestal` binary. The page asks for the
//! token and refuses a wrong one; it shows what a base runs after an install, a switch and a
//! module that failed to start; and its own actions (switch, weights, upload, uninstall) change
//! the base. Screenshots go to `target/console-screenshots/`.

use std::{
    net::{TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command},
    time::{Duration, Instant},
};

use fantoccini::{Client, ClientBuilder, Locator};
use pedestal_tests::{TestBase, artifacts};
use serde_json::{Value, json};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A ChromeDriver on a free loopback port; killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    /// Starts chromedriver on a free port, again on another one when it exits at once (the port
    /// it was given was taken meanwhile), and fails with what it said.
    fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                std::path::Path::new(program).exists(),
                "{program} is missing: `cargo xtask test` installs Debian's chromium and chromium-driver"
            );
        }
        let mut said = String::new();
        for _attempt in 0..5 {
            let port = free_port();
            let log = tempfile::NamedTempFile::new().unwrap();
            let mut child = Command::new(CHROMEDRIVER)
                .args([format!("--port={port}"), "--allowed-ips=127.0.0.1".into()])
                .stdout(log.reopen().unwrap())
                .stderr(log.reopen().unwrap())
                .spawn()
                .expect("starting chromedriver");
            let started = Instant::now();
            loop {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Driver { child, url: format!("http://127.0.0.1:{port}") };
                }
                if let Ok(Some(status)) = child.try_wait() {
                    said = format!(
                        "chromedriver on {port} exited with {status}: {}",
                        std::fs::read_to_string(log.path()).unwrap_or_default()
                    );
                    break;
                }
                if started.elapsed() > Duration::from_secs(60) {
                    let _ = child.kill();
                    let _ = child.wait();
                    said = format!(
                        "chromedriver did not listen on {port} in 60 s: {}",
                        std::fs::read_to_string(log.path()).unwrap_or_default()
                    );
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("{said}");
    }
}

/// A port free on both 127.0.0.1 and [::1] (chromedriver listens on both and exits when either
/// is taken), chosen below the kernel's ephemeral range so that the tests' own outgoing
/// connections, which take ephemeral ports on either stack, cannot take it meanwhile.
fn free_port() -> u16 {
    use rand::Rng;
    let mut rng = rand::rng();
    for _ in 0..1000 {
        let port = rng.random_range(20_000..32_000);
        let v4 = TcpListener::bind(("127.0.0.1", port));
        let v6 = TcpListener::bind(("::1", port));
        let v6_free = match &v6 {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::AddrNotAvailable,
        };
        if v4.is_ok() && v6_free {
            return port;
        }
    }
    panic!("no loopback port free on both IPv4 and IPv6 in 20000..32000");
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A headless Chromium session, with the flags this machine's closed network needs (no
/// background connections), in a fresh profile.
async fn browser(driver: &Driver, profile: &std::path::Path) -> Client {
    let args = [
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
        "--window-size=1400,1100",
    ]
    .iter()
    .map(|a| a.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect::<Vec<_>>();
    let mut capabilities = serde_json::Map::new();
    capabilities.insert("goog:chromeOptions".into(), json!({ "binary": CHROMIUM, "args": args }));
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a Chromium session through chromedriver")
}

/// Polls `script` (a function body returning a value) until it returns something truthy.
async fn until(client: &Client, what: &str, script: &str) -> Value {
    let started = Instant::now();
    loop {
        let found = client.execute(script, vec![]).await.expect("running a script in the page");
        if !matches!(found, Value::Null | Value::Bool(false)) && found != json!("") && found != json!([]) {
            return found;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let body = client.execute("return document.body.innerText", vec![]).await.unwrap_or_default();
            panic!("timed out waiting for {what}; the page says:\n{}", body.as_str().unwrap_or_default());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The text of the first element matching `css`, once there is one.
async fn text(client: &Client, css: &str) -> String {
    let script = format!("const e = document.querySelector({}); return e && e.textContent", json!(css));
    until(client, css, &script).await.as_str().unwrap_or_default().to_owned()
}

async fn click(client: &Client, css: &str) {
    until(client, css, &format!("return !!document.querySelector({})", json!(css))).await;
    client
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap_or_else(|e| panic!("clicking {css}: {e}"));
}

async fn screenshot(client: &Client, name: &str) {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"))
        .join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The state of `module@version` as the page shows it (`null` while it is not listed).
fn state_script(module: &str, version: &str) -> String {
    state_where(module, version, "s")
}

/// A script returning `condition`, an expression over `s`, the state of `module@version` as the
/// page shows it.
fn state_where(module: &str, version: &str, condition: &str) -> String {
    format!(
        "const row = document.querySelector('[data-module=\"{module}\"] tr.version[data-version=\"{version}\"]'); \
         const s = row && row.dataset.state; return {condition}"
    )
}

fn active_version(base: &TestBase) -> Value {
    base.admin_get("/api/v1/modules/fx-versioned").json["active_version"].clone()
}

#[test]
fn the_console_shows_a_base_and_acts_on_it_in_a_real_browser() {
    let base = TestBase::start();
    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = browser(&driver, profile.path()).await;
        let page = format!("{}/console", base.admin);
        client.goto(&page).await.unwrap();

        // The page holds no data: it asks for the token, and a wrong one is refused.
        until(&client, "the token form", "return !document.getElementById('login').hidden").await;
        client.find(Locator::Id("token")).await.unwrap().send_keys("not-the-token-at-all").await.unwrap();
        click(&client, "#login-submit").await;
        let refused = text(&client, "#login-error").await;
        assert!(refused.contains("token"), "{refused}");
        client.find(Locator::Id("token")).await.unwrap().send_keys(base.token()).await.unwrap();
        click(&client, "#login-submit").await;
        until(&client, "the console", "return !document.getElementById('app').hidden").await;
        let empty = text(&client, "#modules").await;
        assert!(empty.contains("No module installed"), "{empty}");

        // What the base runs: two versions, the first with the traffic; then a module that
        // failed to start stands out with its reason.
        base.install_ok(artifacts::VERSIONED_1_0_0);
        base.install_ok(artifacts::VERSIONED_1_1_0);
        let failed = base.install(artifacts::START_FAILS);
        assert_eq!(failed.status, 422, "{failed:?}");
        for _ in 0..30 {
            assert_eq!(base.get("/fx-versioned/version").status, 200);
        }
        until(&client, "1.1.0 listed", &state_script("fx-versioned", "1.1.0")).await;
        assert_eq!(until(&client, "1.0.0 active", &state_script("fx-versioned", "1.0.0")).await, "active");
        assert_eq!(until(&client, "1.1.0 state", &state_script("fx-versioned", "1.1.0")).await, "inactive");
        let bar = text(&client, "[data-module=\"fx-versioned\"] .traffic-bar").await;
        assert_eq!(bar, "1.0.0 100%");
        assert_eq!(until(&client, "broken shown", &state_script("fx-start-fails", "0.1.0")).await, "broken");
        let row = text(&client, "[data-module=\"fx-start-fails\"] tr.version").await;
        assert!(row.contains("database is unreachable"), "the reason is shown: {row}");
        let stands_out = "return document.querySelector('[data-module=\"fx-start-fails\"] tr.version').classList.contains('stands-out')";
        assert_eq!(client.execute(stands_out, vec![]).await.unwrap(), true);
        let status = text(&client, "#base-status").await;
        assert_ne!(status, "healthy", "a broken module degrades the base: {status}");
        screenshot(&client, "1-installed").await;

        // A switch made elsewhere shows up.
        let switched = base.admin_json("POST", "/api/v1/modules/fx-versioned/switch", &json!({"version": "1.1.0"}));
        assert_eq!(switched.status, 200, "{switched:?}");
        until(
            &client,
            "1.1.0 active in the page",
            &state_where("fx-versioned", "1.1.0", "s === 'active'"),
        )
        .await;

        // Actions through the page: switch back, a canary split, then charts and the log of
        // the selected module.
        click(&client, "[data-module=\"fx-versioned\"] tr.version[data-version=\"1.0.0\"] button.switch").await;
        let message = text(&client, "#message").await;
        assert!(message.starts_with("switched fx-versioned to 1.0.0"), "{message}");
        assert_eq!(active_version(&base), "1.0.0");
        click(&client, "[data-module=\"fx-versioned\"] .title").await;
        until(&client, "the detail panel", "return !document.getElementById('detail').hidden").await;
        client.find(Locator::Id("weights")).await.unwrap().send_keys("1.0.0=90 1.1.0=10").await.unwrap();
        click(&client, "#weights-apply").await;
        until(&client, "the split applied", "return document.getElementById('message').textContent.includes('split')").await;
        let weights = base.admin_get("/api/v1/modules/fx-versioned/traffic").json["weights"].clone();
        assert_eq!(weights, json!({"1.0.0": 90, "1.1.0": 10}));
        let bar = until(
            &client,
            "the split in the bar",
            "const t = document.querySelector('[data-module=\"fx-versioned\"] .traffic-bar').textContent; \
             return t.includes('90%') && t",
        )
        .await;
        assert_eq!(bar, "1.0.0 90%", "1.1.0's 10% is drawn without a label");
        let widths = client
            .execute(
                "return [...document.querySelectorAll('[data-module=\"fx-versioned\"] .traffic-bar span')] \
                 .map(s => Math.round(100 * s.getBoundingClientRect().width / s.parentElement.getBoundingClientRect().width))",
                vec![],
            )
            .await
            .unwrap();
        assert_eq!(widths, json!([90, 10]), "the bar is drawn to scale");
        for _ in 0..30 {
            assert_eq!(base.get("/fx-versioned/version").status, 200);
        }
        let busiest = until(
            &client,
            "a busy second in the requests chart",
            "const c = document.querySelector('.chart[data-metric=\"requests_per_s\"]'); \
             const max = c && c.querySelector('.value').textContent; \
             return c && c.querySelector('.legend').textContent.includes('1.0.0:') && max !== 'max 0.0' && max",
        )
        .await;
        let busiest: f64 = busiest.as_str().unwrap().trim_start_matches("max ").parse().unwrap();
        assert!(busiest >= 5.0, "30 requests in about a second: {busiest}/s");
        let charts = client
            .execute("return [...document.querySelectorAll('.chart')].map(c => c.dataset.metric)", vec![])
            .await
            .unwrap();
        assert_eq!(charts, json!(["requests_per_s", "server_errors_per_s", "p50_us", "heap_bytes", "cpu_percent"]));
        // A bad split is refused by the API, and the page shows its error as it is.
        client.find(Locator::Id("weights")).await.unwrap().clear().await.unwrap();
        client.find(Locator::Id("weights")).await.unwrap().send_keys("9.9.9=100").await.unwrap();
        click(&client, "#weights-apply").await;
        let refusal =
            until(&client, "the refusal", "const m = document.getElementById('message'); return m.className === 'error' && m.textContent").await;
        let code = base.admin_json("PUT", "/api/v1/modules/fx-versioned/traffic", &json!({"9.9.9": 100})).code().to_owned();
        assert!(refusal.as_str().unwrap().starts_with(&format!("{code}: ")), "{refusal} (the API says {code})");
        screenshot(&client, "2-detail").await;

        // Upload through the page, then uninstall with the two-step button.
        let file = std::fs::canonicalize(artifacts::VERSIONED_2_0_0).unwrap();
        client.find(Locator::Id("upload-file")).await.unwrap().send_keys(&file.display().to_string()).await.unwrap();
        let installed = text(&client, "#message").await;
        let installed = if installed.starts_with("installed") {
            installed
        } else {
            until(&client, "the upload's answer", "const t = document.getElementById('message').textContent; return t.startsWith('installed') && t")
                .await
                .as_str()
                .unwrap()
                .to_owned()
        };
        assert!(installed.starts_with("installed fx-versioned@2.0.0 (inactive)"), "{installed}");
        until(&client, "2.0.0 listed", &state_script("fx-versioned", "2.0.0")).await;
        let uninstall = "[data-module=\"fx-versioned\"] tr.version[data-version=\"2.0.0\"] button.uninstall";
        click(&client, uninstall).await;
        assert_eq!(text(&client, &format!("{uninstall}.armed")).await, "Confirm uninstall");
        assert_eq!(base.admin_get("/api/v1/modules/fx-versioned").json["versions"].as_array().unwrap().len(), 3);
        click(&client, uninstall).await;
        until(&client, "the uninstall's answer", "return document.getElementById('message').textContent.startsWith('uninstalled')").await;
        let versions: Vec<_> = base.admin_get("/api/v1/modules/fx-versioned").json["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["version"].clone())
            .collect();
        assert_eq!(versions, [json!("1.0.0"), json!("1.1.0")]);
        until(&client, "2.0.0 gone", &state_where("fx-versioned", "2.0.0", "!s")).await;
        screenshot(&client, "3-after-actions").await;
        client.close().await.unwrap();
    });
}

#[test]
fn the_console_follows_a_modules_log_live_and_its_files_are_locked_down() {
    let base = TestBase::start();
    // The page's files answer without a token, with a policy that allows nothing from elsewhere.
    let page = base.admin_without_token("GET", "/console/", &[], None);
    assert_eq!(page.status, 200, "{page:?}");
    let header =
        |name: &str| page.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default();
    assert!(header("content-security-policy").contains("default-src 'none'"), "{page:?}");
    assert_eq!(header("x-frame-options"), "DENY");
    let data = base.admin_without_token("GET", "/api/v1/modules", &[], None);
    assert_eq!(data.status, 401, "the data still needs the token: {data:?}");

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = browser(&driver, profile.path()).await;
        client.goto(&format!("{}/console/", base.admin)).await.unwrap();
        client.find(Locator::Id("token")).await.unwrap().send_keys(base.token()).await.unwrap();
        click(&client, "#login-submit").await;
        base.install_ok(artifacts::GOOD);
        click(&client, "[data-module=\"fx-good\"] .title").await;
        until(&client, "the log pane", "return !document.getElementById('detail').hidden").await;
        // The tail, then a line logged after the stream opened arrives through it.
        assert_eq!(base.get("/fx-good/log").body, "logged");
        until(&client, "the tail", "return document.getElementById('log-lines').textContent.includes('fixture log line')").await;
        assert!(base.get("/fx-good/log-burst?n=2").body.contains('2'));
        let lines = until(
            &client,
            "the streamed lines",
            "const t = document.getElementById('log-lines').textContent; return t.includes('burst line 1') && t",
        )
        .await;
        assert!(lines.as_str().unwrap().contains("0.1.0"), "{lines}");
        screenshot(&client, "4-log").await;
        client.close().await.unwrap();
    });
}

fn fleet_spec(version: &str, artifact: &str) -> String {
    format!(
        "name = \"fx-versioned\"\nversion = \"{version}\"\nartifact = {artifact:?}\nreplicas = 2\n\
         [rollout]\nsteps = [{{ bases = 1, pause = \"manual\" }}, {{ bases = \"100%\" }}]\nmax_unavailable = 1\n"
    )
}

/// The same console at a controller shows the fleet: bases × modules, and a rollout held at
/// its first step.
#[test]
fn the_fleet_console_shows_bases_modules_and_a_rollout() {
    use pedestal_tests::fleet::{Fleet, SpecDir, TOKEN, fleet_cli};
    let fleet = Fleet::start(2, |_| Vec::new());
    let controller = fleet.controller();
    let specs = SpecDir::new();
    let v1 = specs.write("v1", &fleet_spec("1.0.0", artifacts::VERSIONED_1_0_0));
    fleet_cli(controller, &["apply", "--wait", v1.to_str().unwrap()]).ok();
    let v2 = specs.write("v2", &fleet_spec("1.1.0", artifacts::VERSIONED_1_1_0));
    fleet_cli(controller, &["apply", v2.to_str().unwrap()]).ok();

    let driver = Driver::start();
    let profile = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let client = browser(&driver, profile.path()).await;
        client.goto(&format!("{}/console", controller.url())).await.unwrap();
        client.find(Locator::Id("token")).await.unwrap().send_keys(TOKEN).await.unwrap();
        click(&client, "#login-submit").await;
        let rollout = until(
            &client,
            "the rollout held for promotion",
            "const r = document.querySelector('.rollout[data-module=\"fx-versioned\"]'); \
             return r && r.textContent.includes('awaiting promotion') && r.textContent",
        )
        .await;
        assert!(rollout.as_str().unwrap().contains("1.0.0 → 1.1.0: progressing, step 1 of 2"), "{rollout}");
        let cells = until(
            &client,
            "both bases with their version",
            "const cells = [...document.querySelectorAll('tr.fleet-base td.replica[data-module=\"fx-versioned\"] code')] \
             .map(c => c.textContent); return cells.length === 2 && cells.sort().join(' ')",
        )
        .await;
        assert_eq!(cells, "1.0.0 1.1.0", "one base moved, one not yet");
        let bases = client
            .execute("return [...document.querySelectorAll('tr.fleet-base')].map(r => r.dataset.base)", vec![])
            .await
            .unwrap();
        assert_eq!(bases, json!(["b0", "b1"]));
        screenshot(&client, "5-fleet").await;
        client.close().await.unwrap();
    });
}

//! `cargo xtask bench devloop [--quick] [--repeats N]`: the module developer's loop, timed.
//!
//! Generates the template module into a temporary directory outside this repository (as a
//! module team would, its own project), starts a release base on free loopback ports, deploys
//! the module once (the cold build, reported apart), then `--repeats` times (default 15,
//! `--quick` 5): edits the handler's answer, and times from the edit until the base serves the
//! new answer, split into the release build, the deploy (the upload and the same-version
//! replace) and the first request that sees it. Results go to stdout and to
//! `target/release/bench-devloop-results.md`; BENCHMARKS.md records them with the machine.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};

use crate::{cargo, deploy, exec, flag, project_root};

/// The generated module's name (and mount point).
const NAME: &str = "devloop-mod";

pub fn run(args: &[String]) -> anyhow::Result<()> {
    let quick = args.iter().any(|a| a == "--quick");
    let repeats: usize = match flag(args, "--repeats") {
        Some(n) => n.parse().context("--repeats takes a number")?,
        None if quick => 5,
        None => 15,
    };
    let root = project_root();
    exec(cargo().args(["build", "--release", "-p", "pedestal", "--bin", "pedestal"]))?;
    crate::test::ensure_cargo_generate()?;
    let scratch = std::env::temp_dir().join(format!("pedestal-devloop-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = measure(&root, &scratch, repeats);
    let _ = std::fs::remove_dir_all(&scratch);
    let report = result?;
    println!("{report}");
    std::fs::write(root.join("target/release/bench-devloop-results.md"), &report)?;
    Ok(())
}

fn measure(root: &Path, scratch: &Path, repeats: usize) -> anyhow::Result<String> {
    let generated = Command::new("cargo")
        .args(["generate", "--path"])
        .arg(root.join("module-template"))
        .args(["--name", NAME, "--destination"])
        .arg(scratch)
        .args(["--vcs", "none", "--silent", "--define"])
        .arg(format!("sdk_path={}", root.join("module-api").display()))
        .status()
        .context("running cargo generate")?;
    if !generated.success() {
        bail!("cargo generate failed");
    }
    let dir = scratch.join(NAME);
    let data = scratch.join("data");
    std::fs::create_dir_all(&data)?;
    let mut base = Base::start(&root.join("target/release/pedestal"), &data)?;
    let outcome = (|| {
        let target = deploy::Target::parse(dir.to_str().context("a UTF-8 path")?)?;
        let upload = deploy::Upload::new(&base.admin, Some(deploy::read_token(&data.join("admin-token"))?));
        let started = Instant::now();
        let built = deploy::build(&target)?;
        let cold_build = started.elapsed();
        deploy::deploy_build(&built, &upload)?;
        let source = dir.join("src/lib.rs");
        let original = std::fs::read_to_string(&source)?;
        let marker = "format!(\"hello, {name}, from";
        if !original.contains(marker) {
            bail!("the template's handler changed: no {marker:?} in {}", source.display());
        }
        let url = format!("{}/{NAME}/hello?name=loop", base.traffic);
        let mut rounds = Vec::new();
        for round in 0..repeats {
            let tag = format!("round {round}");
            let edited = original.replace(marker, &format!("format!(\"{tag}: hello, {{name}}, from"));
            let edit = Instant::now();
            std::fs::write(&source, edited)?;
            let built = deploy::build(&target)?;
            let build = edit.elapsed();
            deploy::deploy_build(&built, &upload)?;
            let deployed = edit.elapsed();
            // The deploy answered once the new build was routed: the next request sees it.
            let served = deployed + wait_for(&url, &tag)?;
            rounds.push(Round { build, deploy: deployed - build, served });
        }
        Ok((cold_build, rounds))
    })();
    base.stop();
    let (cold_build, rounds) = outcome?;
    Ok(render(cold_build, &rounds))
}

/// One measure of a round.
type Phase = fn(&Round) -> Duration;

/// One edit → live round.
struct Round {
    build: Duration,
    deploy: Duration,
    /// From the edit until a request got the new answer.
    served: Duration,
}

/// Polls `url` until its answer contains `tag` (at most a minute); the time since the call.
fn wait_for(url: &str, tag: &str) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(60) {
        if let Ok(response) = ureq::get(url).call()
            && response.into_string().is_ok_and(|body| body.contains(tag))
        {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    bail!("{url} never answered with {tag:?}")
}

fn render(cold_build: Duration, rounds: &[Round]) -> String {
    let pick = |f: Phase| {
        let mut values: Vec<Duration> = rounds.iter().map(f).collect();
        values.sort();
        let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
        (at(0.5), at(0.9), values[0], values[values.len() - 1])
    };
    let mut report = format!(
        "## Developer loop: edit → live\n\nThe template module generated outside the repository (its own \
         `[workspace]`, the SDK by path), a release base on loopback. Each round rewrites the handler's \
         answer, runs `cargo build --release` on the module and deploys it (a same-version replace), and \
         waits until a request gets the new answer. {} rounds, warm; the first (cold) build took {:.1} s.\n\n\
         | phase | p50 s | p90 s | min s | max s |\n|---|---|---|---|---|\n",
        rounds.len(),
        cold_build.as_secs_f64()
    );
    let rows: [(&str, Phase); 4] = [
        ("release build of the module", |r| r.build),
        ("deploy (upload, same-version replace)", |r| r.deploy),
        ("first request with the new answer", |r| r.served - r.build - r.deploy),
        ("**edit → new answer served**", |r| r.served),
    ];
    for (label, f) in rows {
        let (p50, p90, min, max) = pick(f);
        report += &format!(
            "| {label} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            p50.as_secs_f64(),
            p90.as_secs_f64(),
            min.as_secs_f64(),
            max.as_secs_f64()
        );
    }
    let (p50, ..) = pick(|r| r.served);
    report += &format!(
        "\nAim: p50 ≤ 3 s warm: **{}** in this run ({:.2} s).\n",
        if p50 <= Duration::from_secs(3) { "met" } else { "not met" },
        p50.as_secs_f64()
    );
    report
}

/// A release base on free loopback ports, in its own data directory.
struct Base {
    child: Child,
    traffic: String,
    admin: String,
}

impl Base {
    fn start(binary: &Path, data: &Path) -> anyhow::Result<Self> {
        let mut child = Command::new(binary)
            .args(["serve", "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env("PEDESTAL_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("starting pedestal")?;
        let mut ready = String::new();
        BufReader::new(child.stdout.take().context("the base's stdout")?).read_line(&mut ready)?;
        let addr = |key: &str| ready.split_whitespace().skip_while(|w| *w != key).nth(1).map(str::to_owned);
        match (addr("traffic"), addr("operations")) {
            (Some(traffic), Some(admin)) => Ok(Self { child, traffic, admin }),
            _ => {
                let _ = child.kill();
                bail!("the base did not start: {ready:?}")
            }
        }
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! `cargo xtask demo`: the main job. Builds the base and the example modules, starts the base on
//! 127.0.0.1:7070 (traffic) and 127.0.0.1:7071 (operations), deploys the examples and prints
//! what to try. Runs until Ctrl-C. `cargo xtask demo --fleet` runs a fleet instead (see
//! `demo_fleet.rs`).

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{cargo, deploy, exec, project_root};

/// The demo base's config file.
const DEMO_CONFIG: &str = "\
[modules.notes.config]
title = \"Pedestal demo notes\"
max_notes = 100
";

/// The example modules the demo deploys.
const EXAMPLES: &[&str] = &["examples/greeter", "examples/notes"];

pub fn run(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "--fleet" || a == "fleet") {
        return crate::demo_fleet::run();
    }
    exec(cargo().args(["build", "--release", "-p", "pedestal"]))?;
    let libraries = EXAMPLES.iter().map(|e| deploy::build(e)).collect::<anyhow::Result<Vec<_>>>()?;

    let root = project_root();
    let data_dir = root.join("target").join("demo-data");
    let _ = std::fs::remove_dir_all(&data_dir);
    std::fs::create_dir_all(&data_dir)?;
    // The modules' configuration; edit it while the demo runs: the base hands the new values
    // to the modules without a restart.
    let config = data_dir.join("pedestal.toml");
    std::fs::write(&config, DEMO_CONFIG)?;
    let mut base = Command::new(root.join("target/release/pedestal"))
        .args(["serve", "--data-dir"])
        .arg(&data_dir)
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting pedestal")?;
    let mut ready = String::new();
    BufReader::new(base.stdout.take().unwrap()).read_line(&mut ready)?;
    if !ready.starts_with("pedestal ready") {
        let _ = base.kill();
        bail!("the base did not start (is something else listening on 127.0.0.1:7070/7071?)");
    }
    // The worker wrote it before it reported ready.
    let token_file = data_dir.join("admin-token");
    let token = deploy::read_token(&token_file)?;
    for library in &libraries {
        let reply = deploy::install("http://127.0.0.1:7071", Some(&token), library, "")?;
        println!(
            "deployed {}@{} in {:.2} ms",
            reply["name"].as_str().unwrap_or("?"),
            reply["version"].as_str().unwrap_or("?"),
            reply["install_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    println!(
        "\n{}\nThe operations API takes the token the base generated into {token}:\n  \
         T=\"Authorization: Bearer $(cat {token})\"; J='content-type: application/json'\n\
         Try:\n  \
         curl '127.0.0.1:7070/greeter/hello?name=Ada'\n  \
         curl '127.0.0.1:7070/greeter/slow?ms=200'\n  \
         curl -XPOST 127.0.0.1:7070/notes/notes -d 'buy milk'\n  \
         curl 127.0.0.1:7070/notes/notes\n  \
         curl 127.0.0.1:7070/notes/title   (then edit {config} and ask again)\n  \
         curl -H \"$T\" 127.0.0.1:7071/api/v1/modules/notes/kv\n  \
         curl -H \"$T\" -H \"$J\" -XPOST 127.0.0.1:7071/api/v1/events/notes.added -d '{{\"from\": \"curl\"}}'\n  \
         curl -s -H \"$T\" 127.0.0.1:7071/metrics | grep notes_added_total\n  \
         curl -H \"$T\" 127.0.0.1:7071/api/v1/modules\n  \
         curl -H \"$T\" 127.0.0.1:7071/api/v1/modules/greeter\n  \
         curl -H \"$T\" -XDELETE 127.0.0.1:7071/api/v1/modules/notes/0.1.0\n  \
         curl -H \"$T\" 127.0.0.1:7071/api/v1/health\n  \
         curl -H \"$T\" 127.0.0.1:7071/api/v1/base   (the worker process; a module crash restarts it)\n  \
         curl -H \"$T\" 127.0.0.1:7071/api/v1/modules/notes/limits\n  \
         curl -H \"$T\" -H \"$J\" -XPUT 127.0.0.1:7071/api/v1/modules/greeter/limits -d '{{\"max_concurrent_requests\": 1}}'\n  \
         tail -f {audit}   (every operation, and every refused request)\n\
         New module: cargo generate --path module-template --name hello --destination modules --vcs none\n             \
         cargo xtask deploy modules/hello --data-dir {data} && curl 127.0.0.1:7070/hello/hello\n\
         Module logs appear below, tagged module=... version=...; Ctrl-C stops the base.\n",
        ready.trim(),
        token = token_file.display(),
        config = config.display(),
        audit = data_dir.join("audit.log").display(),
        data = data_dir.display(),
    );
    let status = base.wait()?;
    if !status.success() {
        bail!("the base exited with {status}");
    }
    Ok(())
}

//! `cargo xtask demo [--listen ADDR] [--admin-listen ADDR] [--data-dir DIR] [--fresh] [--verbose]`: the main
//! job. Builds the base and the example modules, starts the base on 127.0.0.1:7070 (traffic) and
//! 127.0.0.1:7071 (operations) unless told otherwise, deploys the examples (unchanged ones stay
//! as they are) and prints what to try. State in `target/demo-data` is kept across runs unless
//! `--fresh`. Runs until Ctrl-C. `cargo xtask demo --fleet` runs a fleet instead (see
//! `demo_fleet.rs`).

use std::{
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::{cargo, deploy, exec, flag, project_root};

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
    let root = project_root();
    if !root.join("target/release/pedestal").exists() {
        eprintln!(
            "first run: building the base and the example modules in release (about 7–8 minutes on \
             two cores; later runs take seconds)"
        );
    }
    exec(cargo().args(["build", "--release", "-p", "pedestal"]))?;
    let builds = EXAMPLES
        .iter()
        .map(|e| deploy::build(&deploy::Target::Dir(root.join(e))))
        .collect::<anyhow::Result<Vec<_>>>()?;

    let listen = flag(args, "--listen").unwrap_or_else(|| "127.0.0.1:7070".into());
    let admin_listen = flag(args, "--admin-listen").unwrap_or_else(|| "127.0.0.1:7071".into());
    let data_dir = flag(args, "--data-dir").map_or_else(|| root.join("target/demo-data"), PathBuf::from);
    // State (notes, installed modules) is kept across demo runs unless asked to start over.
    if args.iter().any(|a| a == "--fresh") {
        let _ = std::fs::remove_dir_all(&data_dir);
    }
    std::fs::create_dir_all(&data_dir)?;
    // The modules' configuration; edit it while the demo runs: the base hands the new values
    // to the modules without a restart. Kept when it exists (it may have been edited).
    let config = data_dir.join("pedestal.toml");
    if !config.exists() {
        std::fs::write(&config, DEMO_CONFIG)?;
    }
    let mut base = Command::new(root.join("target/release/pedestal"));
    // Quiet unless asked: the modules' lines and the base's warnings; `--verbose` (or
    // `PEDESTAL_LOG`) shows the base's own info lines too.
    if std::env::var_os("PEDESTAL_LOG").is_none() && !args.iter().any(|a| a == "--verbose") {
        base.env("PEDESTAL_LOG", "warn,module=info");
    }
    let mut base = base
        .args(["serve", "--listen", &listen, "--admin-listen", &admin_listen, "--data-dir"])
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
        bail!(
            "the base did not start (is something else listening on {listen} or {admin_listen}? \
             --listen and --admin-listen choose other addresses)"
        );
    }
    // The worker wrote it before it reported ready.
    let token_file = data_dir.join("admin-token");
    let token = deploy::read_token(&token_file)?;
    let upload = deploy::Upload::new(&format!("http://{admin_listen}"), Some(token));
    for build in &builds {
        println!("{}", deploy::deploy_build(build, &upload)?);
    }
    let (t, a) = (listen.as_str(), admin_listen.as_str());
    println!(
        "\n{}\nOperate it with the CLI (the token is read from {token}) or in a browser at http://{a}/console:\n  \
         export PEDESTAL_ADMIN=http://{a} PEDESTAL_DATA_DIR={data}; P={bin}\n  \
         T=\"Authorization: Bearer $(cat {token})\"; J='content-type: application/json'   (for curl)\n\
         Try:\n  \
         curl '{t}/greeter/hello?name=Ada'\n  \
         curl '{t}/greeter/slow?ms=200'\n  \
         curl -XPOST {t}/notes/notes -d 'buy milk'\n  \
         curl {t}/notes/notes   (kept across demo runs; --fresh starts over)\n  \
         curl {t}/notes/title   (then edit {config} and ask again)\n  \
         curl {t}/.well-known/pedestal/ready   (for load balancers; no token)\n  \
         $P ls\n  \
         $P show greeter\n  \
         $P top   (live requests/s, latency, heap and CPU per module; q quits)\n  \
         $P health\n  \
         $P logs notes -f\n  \
         $P limits greeter --max-concurrent 1\n  \
         $P rm notes@0.1.0   (then {t}/notes/notes answers 404)\n  \
         curl -H \"$T\" {a}/api/v1/modules/notes/kv\n  \
         curl -H \"$T\" -H \"$J\" -XPOST {a}/api/v1/events/notes.added -d '{{\"from\": \"curl\"}}'\n  \
         curl -s -H \"$T\" {a}/metrics | grep notes_added_total\n  \
         curl -H \"$T\" {a}/api/v1/openapi.json   (every route of the API)\n  \
         tail -f {audit}   (every operation, and every refused request)\n\
         New module, a project of its own anywhere (here in ~/pedestal-modules):\n  \
         cargo generate --path {root}/module-template --name hello --destination ~/pedestal-modules --vcs none --define sdk_path={root}/module-api\n  \
         cargo xtask deploy ~/pedestal-modules/hello --admin http://{a} --data-dir {data} && curl {t}/hello/hello\n\
         Module logs appear below, tagged module=... version=...; Ctrl-C stops the base.\n",
        ready.trim(),
        token = token_file.display(),
        config = config.display(),
        audit = data_dir.join("audit.log").display(),
        data = data_dir.display(),
        root = root.display(),
        bin = root.join("target/release/pedestal").display(),
    );
    let status = base.wait()?;
    if !status.success() {
        bail!("the base exited with {status}");
    }
    Ok(())
}

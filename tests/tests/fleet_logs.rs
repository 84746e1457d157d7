//! `pedestal fleet logs`: every base's log of a module, fanned in by a controller, each line
//! tagged with its base; `--follow` keeps printing new lines.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use pedestal_tests::{
    artifacts, eventually,
    fleet::{Fleet, SpecDir, TOKEN, fleet_cli},
};

#[test]
fn fleet_logs_fans_in_every_bases_lines_tagged_and_follows_new_ones() {
    let fleet = Fleet::start(2, |_| Vec::new());
    let specs = SpecDir::new();
    let spec = specs.write(
        "good",
        &format!("name = \"fx-good\"\nversion = \"0.1.0\"\nartifact = {:?}\nreplicas = 2\n", artifacts::GOOD),
    );
    fleet_cli(fleet.controller(), &["apply", spec.to_str().unwrap(), "--wait"]).ok();
    for base in &fleet.bases {
        let reply = base.local("/fx-good/log");
        assert_eq!(reply.status, 200, "{reply:?}");
    }
    let out = eventually("both bases' lines", Duration::from_secs(10), || {
        let out = fleet_cli(fleet.controller(), &["logs", "fx-good"]).ok().stdout;
        (out.contains("[b0]") && out.contains("[b1]")).then_some(out)
    });
    for base in ["b0", "b1"] {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("[{base}]")) && l.contains("fixture tracing line"))
            .unwrap_or_else(|| panic!("no tracing line of {base} in {out}"));
        assert!(line.contains(" info "), "{line}");
        assert!(line.contains("answer=42"), "the fields too: {line}");
    }
    // JSON: one object per line, with its base.
    let json =
        fleet_cli(fleet.controller(), &["--output", "json", "logs", "fx-good", "--tail", "1"]).ok().stdout;
    let objects: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(objects.len(), 2, "one line of each base: {json}");
    let mut bases: Vec<&str> = objects.iter().map(|o| o["base"].as_str().unwrap()).collect();
    bases.sort_unstable();
    assert_eq!(bases, ["b0", "b1"]);
    assert!(objects.iter().all(|o| o["line"]["module"] == "fx-good"), "{json}");

    // --follow: a line written after it started arrives.
    let mut follow = Command::new(artifacts::PEDESTAL)
        .args(["fleet", "--controller", fleet.controller().url(), "--fleet-token", TOKEN])
        .args(["logs", "fx-good", "--follow", "--tail", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting fleet logs --follow");
    let (lines, received) = mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if lines.send(line).is_err() {
                break;
            }
        }
    });
    let burst = eventually("a followed line of b1", Duration::from_secs(15), || {
        assert_eq!(fleet.bases[1].local("/fx-good/log-burst?n=1").status, 200);
        received.recv_timeout(Duration::from_millis(500)).ok().filter(|l| l.contains("burst line 0"))
    });
    assert!(burst.starts_with("[b1]"), "{burst}");
    let _ = follow.kill();
    let _ = follow.wait();
}

//! etcd, as every part of the fleet talks to it: one way to connect, fenced writes for the
//! leader, and what a write that timed out means.
//!
//! Facts measured on these machines (DESIGN.md, Tooling): a watch on a member cut off from its
//! cluster goes silent unless the client sets `require_leader`, so every connection sets it; a
//! write that timed out during quorum loss may still commit later, so a timed-out write is
//! [`Outcome::Unknown`], never "failed": the caller reads back (the controller's and agent's
//! loops are level-triggered: their next pass reads the state again and acts on what is there).

use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, ConnectOptions, Txn, TxnOp, TxnOpResponse};

/// How long one etcd request may take before it counts as unknown.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`connect`] waits for each endpoint's TCP handshake.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Connects to any of `endpoints` (`http://127.0.0.1:2379`...), leader required on every
/// request and watch.
///
/// Only the endpoints that accept a TCP connection now are given to the client: its balanced
/// channel keeps sending a share of the requests to a member that died (measured here: with
/// one of three members killed, every other request failed with "connection refused" for as
/// long as the client lived), so callers reconnect when requests fail, and a reconnect leaves
/// the dead member out. With none reachable, all are tried (the error names them).
pub async fn connect(endpoints: &[String]) -> Result<Client, etcd_client::Error> {
    let probes = endpoints.iter().map(|endpoint| async move {
        let address = endpoint.split_once("://").map_or(endpoint.as_str(), |(_, rest)| rest);
        let address = address.trim_end_matches('/');
        let reachable = matches!(
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(address)).await,
            Ok(Ok(_))
        );
        reachable.then(|| endpoint.clone())
    });
    let reachable: Vec<String> = futures_util::future::join_all(probes).await.into_iter().flatten().collect();
    let endpoints = if reachable.is_empty() { endpoints.to_vec() } else { reachable };
    let options = ConnectOptions::new()
        .with_require_leader(true)
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(1))
        .with_keep_alive_while_idle(true);
    Client::connect(endpoints, Some(options)).await
}

/// What became of a write.
#[derive(Debug)]
pub enum Outcome {
    /// It committed, at this revision.
    Committed(i64),
    /// A compare failed: for a fenced write, this controller no longer leads.
    Refused,
    /// The fence held but the write's sequence had moved on (see [`Fence::commit_in_sequence`]):
    /// another write of the leader's committed since this one was planned, so it is stale.
    Stale,
    /// No answer in time, or the connection broke: it may commit later. Read back.
    Unknown(etcd_client::Error),
}

/// The leader's fence: the leader key and the create revision of this controller's term.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The leader key (`<prefix>leader`).
    pub key: String,
    /// The create revision of the leader key this controller put when elected.
    pub term: i64,
}

impl Fence {
    /// The compare every leader write starts with.
    pub fn compare(&self) -> Compare {
        Compare::create_revision(self.key.clone(), CompareOp::Equal, self.term)
    }

    /// Commits `ops` if and only if this controller still leads.
    pub async fn commit(&self, client: &mut Client, ops: Vec<TxnOp>) -> Outcome {
        commit(client, vec![self.compare()], ops).await
    }

    /// Commits `ops` if this controller still leads **and** the sequence key `sequence` was last
    /// written at revision `after` (0: never), writing it in the same transaction: the
    /// leader's writes form one chain, each planned from the state the previous one left.
    ///
    /// The fence alone stops a deposed leader; the sequence also stops the leader's own stale
    /// writes: one delayed, duplicated or retried after its answer was lost, landing after a
    /// later pass wrote. Such a write finds the sequence moved and is [`Outcome::Stale`];
    /// the caller plans again from a fresh read. One compare and one put per transaction.
    /// The failure branch reads the leader key, so a refusal tells a lost term from a stale
    /// write in the same round trip.
    pub async fn commit_in_sequence(
        &self,
        client: &mut Client,
        sequence: &str,
        after: i64,
        mut ops: Vec<TxnOp>,
    ) -> Outcome {
        let compares =
            vec![self.compare(), Compare::mod_revision(sequence.to_owned(), CompareOp::Equal, after)];
        ops.push(TxnOp::put(sequence.to_owned(), self.term.to_string(), None));
        let txn = Txn::new().when(compares).and_then(ops).or_else(vec![TxnOp::get(self.key.clone(), None)]);
        match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
            Ok(Ok(response)) if response.succeeded() => {
                Outcome::Committed(response.header().map(|h| h.revision()).unwrap_or_default())
            }
            Ok(Ok(response)) => {
                let still_leading = response.op_responses().iter().any(|op| match op {
                    TxnOpResponse::Get(get) => get.kvs().iter().any(|kv| kv.create_revision() == self.term),
                    _ => false,
                });
                if still_leading { Outcome::Stale } else { Outcome::Refused }
            }
            Ok(Err(e)) => Outcome::Unknown(e),
            Err(_) => Outcome::Unknown(etcd_client::Error::InvalidArgs("etcd did not answer in time".into())),
        }
    }
}

/// Commits `ops` if every compare holds.
pub async fn commit(client: &mut Client, compares: Vec<Compare>, ops: Vec<TxnOp>) -> Outcome {
    let txn = Txn::new().when(compares).and_then(ops);
    match tokio::time::timeout(REQUEST_TIMEOUT, client.txn(txn)).await {
        Ok(Ok(response)) if response.succeeded() => {
            Outcome::Committed(response.header().map(|h| h.revision()).unwrap_or_default())
        }
        Ok(Ok(_)) => Outcome::Refused,
        Ok(Err(e)) => Outcome::Unknown(e),
        Err(_) => Outcome::Unknown(etcd_client::Error::InvalidArgs("etcd did not answer in time".into())),
    }
}

#[doc(hidden)]
/// A throwaway single-member etcd on free loopback ports, for this crate's tests against a
/// real etcd (Debian's `etcd-server`). Not part of the fleet's API.
pub mod local_etcd {
    use std::{
        net::TcpListener,
        path::PathBuf,
        process::{Child, Command, Stdio},
        time::{Duration, Instant},
    };

    /// A running etcd, killed and its data removed on drop.
    pub struct Etcd {
        child: Child,
        /// Its client URL.
        pub url: String,
        dir: PathBuf,
    }

    impl Drop for Etcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn port() -> u16 {
        TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
    }

    /// Starts one and waits until it is healthy (20 s at most).
    pub fn start() -> Etcd {
        let (client, peer) = (port(), port());
        let dir = std::env::temp_dir().join(format!("pedestal-fleet-etcd-{}-{client}", std::process::id()));
        let url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let child = Command::new("etcd")
            .args(["--name", "m0", "--data-dir"])
            .arg(dir.join("m0"))
            .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("m0={peer_url}"), "--pre-vote"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("etcd (Debian's etcd-server) is installed");
        let etcd = Etcd { child, url, dir };
        let deadline = Instant::now() + Duration::from_secs(20);
        while ureq::get(&format!("{}/health", etcd.url))
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .is_none_or(|b| !b.contains("true"))
        {
            assert!(Instant::now() < deadline, "etcd did not become healthy");
            std::thread::sleep(Duration::from_millis(50));
        }
        etcd
    }
}

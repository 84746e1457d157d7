//! The fence against a real etcd: a leader's write commits only while the leader key it put
//! is still there with its create revision (its term).

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use pedestal_fleet::store::{self, Fence, Outcome, local_etcd::start as etcd};

/// Takes the leader key under a fresh lease the way a controller campaigns; its term.
async fn elect(client: &mut etcd_client::Client, key: &str, who: &str) -> (i64, i64) {
    let lease = client.lease_grant(30, None).await.expect("a lease").id();
    let txn = Txn::new().when([Compare::version(key, CompareOp::Equal, 0)]).and_then([TxnOp::put(
        key,
        who,
        Some(PutOptions::new().with_lease(lease)),
    )]);
    let response = client.txn(txn).await.expect("the campaign answers");
    assert!(response.succeeded(), "{who} wins a free leader key");
    (lease, response.header().expect("a header").revision())
}

async fn value(client: &mut etcd_client::Client, key: &str) -> Option<String> {
    let got = client.get(key, None).await.expect("a read");
    got.kvs().first().map(|kv| kv.value_str().expect("utf-8").to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_commit() {
    let etcd = etcd();
    let mut client = store::connect(std::slice::from_ref(&etcd.url)).await.expect("connect");
    let key = "/fence-test/leader";

    let (lease, term) = elect(&mut client, key, "first").await;
    let first = Fence { key: key.to_owned(), term };
    let put = |v: &str| vec![TxnOp::put("/fence-test/assign/b1/m", v, None)];
    assert!(matches!(first.commit(&mut client, put("by-first")).await, Outcome::Committed(_)));

    // Its lease ends (expiry or revoke: the key goes the same way): the first leader is deposed.
    client.lease_revoke(lease).await.expect("revoke");
    assert!(matches!(first.commit(&mut client, put("late-first")).await, Outcome::Refused));
    assert_eq!(value(&mut client, "/fence-test/assign/b1/m").await.as_deref(), Some("by-first"));

    // Another controller leads: its term commits, the old one still does not.
    let (_, second_term) = elect(&mut client, key, "second").await;
    assert_ne!(second_term, term);
    let second = Fence { key: key.to_owned(), term: second_term };
    assert!(matches!(first.commit(&mut client, put("late-first")).await, Outcome::Refused));
    assert!(matches!(second.commit(&mut client, put("by-second")).await, Outcome::Committed(_)));
    assert_eq!(value(&mut client, "/fence-test/assign/b1/m").await.as_deref(), Some("by-second"));

    // Even the same controller's key rewritten (same value, new create revision after a
    // delete) is a new term.
    client.delete(key, None).await.expect("delete");
    let (_, third_term) = elect(&mut client, key, "second").await;
    assert!(matches!(second.commit(&mut client, put("stale")).await, Outcome::Refused));
    let third = Fence { key: key.to_owned(), term: third_term };
    assert!(matches!(third.commit(&mut client, put("third")).await, Outcome::Committed(_)));
}

/// The write sequence: a leader's write planned from an older state (a duplicate, a delayed
/// copy, one retried after its answer was lost) is `Stale`, not committed, and a deposed
/// leader's is still `Refused`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaders_stale_writes_cannot_commit() {
    let etcd = etcd();
    let mut client = store::connect(std::slice::from_ref(&etcd.url)).await.expect("connect");
    let (key, sequence, assign) = ("/seq-test/leader", "/seq-test/sequence", "/seq-test/assign/b1/m");
    let (lease, term) = elect(&mut client, key, "first").await;
    let leader = Fence { key: key.to_owned(), term };
    let put = |v: &str| vec![TxnOp::put(assign, v, None)];

    // A pass that read the sequence never written (0) commits its first write and chains the
    // second on the first's revision.
    let Outcome::Committed(first) = leader.commit_in_sequence(&mut client, sequence, 0, put("pass-1a")).await
    else {
        panic!("the first write in sequence commits")
    };
    let Outcome::Committed(second) =
        leader.commit_in_sequence(&mut client, sequence, first, put("pass-1b")).await
    else {
        panic!("the next write in sequence commits")
    };
    assert!(second > first);

    // The same transaction again (a duplicate), or a write planned from before them (a delayed
    // pass): stale, and the value stays.
    assert!(matches!(
        leader.commit_in_sequence(&mut client, sequence, first, put("pass-1b")).await,
        Outcome::Stale
    ));
    assert!(matches!(
        leader.commit_in_sequence(&mut client, sequence, 0, put("pass-0")).await,
        Outcome::Stale
    ));
    assert_eq!(value(&mut client, assign).await.as_deref(), Some("pass-1b"));

    // Writes by others to other keys do not break the chain; a spec written meanwhile is read
    // by the next pass, not guarded by this compare.
    client.put("/seq-test/specs/m", "{}", None).await.expect("a spec put");
    assert!(matches!(
        leader.commit_in_sequence(&mut client, sequence, second, put("pass-2")).await,
        Outcome::Committed(_)
    ));

    // Deposed: refused (not stale), whatever the sequence says.
    client.lease_revoke(lease).await.expect("revoke");
    let now = client.get(sequence, None).await.expect("read").kvs()[0].mod_revision();
    assert!(matches!(
        leader.commit_in_sequence(&mut client, sequence, now, put("deposed")).await,
        Outcome::Refused
    ));
    assert_eq!(value(&mut client, assign).await.as_deref(), Some("pass-2"));
}

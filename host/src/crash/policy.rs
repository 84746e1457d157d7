//! The crash policy at the next start: which crash records are new, how many crashes each module
//! identity had within the window, and whether that quarantines it.
//!
//! The ledger (`<data-dir>/crashes.json`) remembers how far `crashes.log` was processed (so a
//! record is acted on once) and the crashes seen within the window (so a threshold above one
//! counts across restarts). A retry clears a module's crashes: counting starts again.

#![deny(unsafe_code)]

use serde::{Deserialize, Serialize};

use super::record::CrashRecord;

/// When crashes quarantine a module.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// Crashes within the window that quarantine it; 0 never does (crashes are still reported).
    pub quarantine_after: u32,
    /// The window, in milliseconds, counted back from each crash.
    pub window_ms: u64,
}

/// One crash tied to a module, as the ledger keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Crash {
    /// The module's name as installed, when known.
    pub name: Option<String>,
    /// Its version, when known.
    pub version: Option<String>,
    /// The artifact.
    pub sha256: String,
    /// The name it was installed under (`?name=`), if any.
    pub install_name: Option<String>,
    /// `SIGSEGV`, `SIGABRT`, ...
    pub signal: String,
    /// What happened, e.g. `SIGSEGV (null-pointer write at 0x0)`.
    pub description: String,
    /// RFC 3339 time of the crash.
    pub at: String,
    /// The crashing thread's name.
    pub thread: String,
    /// How it was tied to the module: `thread` (its `pdl-<n>` name) or `address`.
    pub attributed_by: String,
    /// The crashed process.
    pub pid: u32,
    /// Unix milliseconds of the crash.
    pub time_ms: u64,
    /// Cleared by a retry (or a fresh start of the module): no longer counted.
    #[serde(default)]
    pub cleared: bool,
}

impl Crash {
    fn of(record: &CrashRecord) -> Option<Self> {
        if !record.is_attributed() {
            return None;
        }
        Some(Self {
            name: record.module.clone(),
            version: record.version.clone(),
            sha256: record.sha256.clone()?,
            install_name: record.install_name.clone(),
            signal: record.signal.clone(),
            description: record.describe(),
            at: record.at(),
            thread: record.thread.clone(),
            attributed_by: record.by.clone(),
            pid: record.pid,
            time_ms: record.time_ms,
            cleared: false,
        })
    }

    /// Whether this crash belongs to the module installed as `name` from artifact `sha256`.
    pub fn is_of(&self, sha256: &str, name: &str) -> bool {
        self.sha256 == sha256
            && (self.name.as_deref() == Some(name) || self.install_name.as_deref() == Some(name))
    }

    fn same_identity(&self, other: &Self) -> bool {
        self.sha256 == other.sha256
            && match (self.name.as_deref(), other.name.as_deref()) {
                (Some(a), Some(b)) => a == b,
                _ => self.install_name == other.install_name,
            }
    }
}

/// What the next start does about one new crash record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The record.
    pub record: CrashRecord,
    /// The crash as the ledger keeps it; `None` when it was not tied to a module.
    pub crash: Option<Crash>,
    /// Uncleared crashes of the same identity within the window, this one included.
    pub crashes_in_window: u32,
    /// Whether the identity is to be quarantined.
    pub quarantine: bool,
}

/// `<data-dir>/crashes.json`.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// Bytes of `crashes.log` already processed.
    #[serde(default)]
    pub offset: u64,
    /// The inode of the `crashes.log` `offset` refers to (it changes when the file is rotated).
    #[serde(default)]
    pub inode: u64,
    /// Crashes tied to modules, within the window, oldest first.
    #[serde(default)]
    pub(crate) crashes: Vec<Crash>,
}

impl Ledger {
    /// Takes in records not processed before (in file order), and says what to do about each.
    /// Crashes older than the window before `now_ms` are forgotten afterwards: they can never
    /// count towards a later crash.
    pub fn admit(&mut self, records: &[CrashRecord], now_ms: u64, policy: Policy) -> Vec<Verdict> {
        let mut verdicts = Vec::with_capacity(records.len());
        for record in records {
            let crash = Crash::of(record);
            let Some(crash) = crash else {
                verdicts.push(Verdict {
                    record: record.clone(),
                    crash: None,
                    crashes_in_window: 0,
                    quarantine: false,
                });
                continue;
            };
            // A record processed again (the ledger was not saved after the last restore) counts once.
            if !self.crashes.iter().any(|c| c.pid == crash.pid && c.time_ms == crash.time_ms) {
                self.crashes.push(crash.clone());
            }
            let since = crash.time_ms.saturating_sub(policy.window_ms);
            let count = self
                .crashes
                .iter()
                .filter(|c| {
                    !c.cleared && c.same_identity(&crash) && (since..=crash.time_ms).contains(&c.time_ms)
                })
                .count() as u32;
            verdicts.push(Verdict {
                record: record.clone(),
                crash: Some(crash),
                crashes_in_window: count,
                quarantine: policy.quarantine_after > 0 && count >= policy.quarantine_after,
            });
        }
        let horizon = now_ms.saturating_sub(policy.window_ms);
        self.crashes.retain(|c| c.time_ms >= horizon);
        verdicts
    }

    /// Stops counting the crashes of the module installed as `name` from `sha256` (a retry).
    /// Returns whether any was cleared.
    pub fn clear(&mut self, sha256: &str, name: &str) -> bool {
        let mut cleared = false;
        for crash in self.crashes.iter_mut().filter(|c| !c.cleared && c.is_of(sha256, name)) {
            crash.cleared = true;
            cleared = true;
        }
        cleared
    }

    /// The crashes within the window, oldest first.
    pub fn crashes(&self) -> &[Crash] {
        &self.crashes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINUTE: u64 = 60_000;

    fn record(module: Option<&str>, time_ms: u64) -> CrashRecord {
        CrashRecord {
            pid: (time_ms / 1000) as u32,
            started_ms: time_ms - 1000,
            time_ms,
            signal: "SIGABRT".into(),
            signo: libc::SIGABRT,
            code: -6,
            addr: None,
            pc: 0,
            sp: 0,
            access: None,
            hint: Some("abort".into()),
            thread: "pdl-1".into(),
            by: if module.is_some() { "thread" } else { "unknown" }.into(),
            module: module.map(str::to_owned),
            version: module.map(|_| "0.1.0".to_owned()),
            sha256: module.map(|_| "ab12".to_owned()),
            install_name: None,
        }
    }

    /// Admits `records` (module, minute) into `ledger` at minute `now` and returns, per record,
    /// the count and whether it quarantines.
    fn check(
        ledger: &mut Ledger,
        quarantine_after: u32,
        records: &[(Option<&str>, u64)],
        now: u64,
        expected: &[(u32, bool)],
    ) {
        let records: Vec<_> = records.iter().map(|(m, t)| record(*m, t * MINUTE)).collect();
        let policy = Policy { quarantine_after, window_ms: 10 * MINUTE };
        let verdicts = ledger.admit(&records, now * MINUTE, policy);
        let found: Vec<_> = verdicts.iter().map(|v| (v.crashes_in_window, v.quarantine)).collect();
        assert_eq!(found, expected, "{verdicts:#?}");
    }

    #[test]
    fn the_first_crash_quarantines_by_default() {
        check(&mut Ledger::default(), 1, &[(Some("a"), 100)], 100, &[(1, true)]);
    }

    #[test]
    fn an_unattributed_crash_is_reported_but_quarantines_nothing() {
        let mut ledger = Ledger::default();
        check(&mut ledger, 1, &[(None, 100)], 100, &[(0, false)]);
        assert!(ledger.crashes().is_empty());
    }

    #[test]
    fn a_higher_threshold_counts_across_restarts_within_the_window() {
        let mut ledger = Ledger::default();
        check(&mut ledger, 3, &[(Some("a"), 100)], 100, &[(1, false)]);
        check(&mut ledger, 3, &[(Some("b"), 101)], 101, &[(1, false)]);
        check(&mut ledger, 3, &[(Some("a"), 102)], 102, &[(2, false)]);
        check(&mut ledger, 3, &[(Some("a"), 103)], 103, &[(3, true)]);
    }

    #[test]
    fn crashes_further_apart_than_the_window_do_not_add_up() {
        let mut ledger = Ledger::default();
        check(&mut ledger, 2, &[(Some("a"), 100)], 100, &[(1, false)]);
        check(&mut ledger, 2, &[(Some("a"), 111)], 111, &[(1, false)]);
        // Found late (the base was down for an hour): still counted from the crash's own time.
        check(&mut ledger, 2, &[(Some("a"), 115)], 175, &[(2, true)]);
    }

    #[test]
    fn a_retry_starts_the_count_again() {
        let mut ledger = Ledger::default();
        check(&mut ledger, 2, &[(Some("a"), 100), (Some("a"), 101)], 101, &[(1, false), (2, true)]);
        assert!(ledger.clear("ab12", "a"));
        assert!(!ledger.clear("ab12", "a"));
        check(&mut ledger, 2, &[(Some("a"), 102)], 102, &[(1, false)]);
    }

    #[test]
    fn a_record_processed_twice_counts_once() {
        let mut ledger = Ledger::default();
        check(&mut ledger, 2, &[(Some("a"), 100)], 100, &[(1, false)]);
        check(&mut ledger, 2, &[(Some("a"), 100)], 100, &[(1, false)]);
    }

    #[test]
    fn zero_never_quarantines() {
        check(
            &mut Ledger::default(),
            0,
            &[(Some("a"), 100), (Some("a"), 100)],
            100,
            &[(1, false), (1, false)],
        );
    }
}

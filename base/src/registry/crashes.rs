//! The crash policy at start: the records earlier processes left in `crashes.log` (see
//! `crash.rs`) quarantine the modules that crashed the base, so the next start serves their
//! neighbours instead of loading the culprit again; below the threshold a crash is reported and
//! the module restored.

use pedestal_module_api::abi::LogLevel;

use super::{Quarantined, Registry};
use crate::{
    crash::{self, Crash, Policy, Verdict},
    logs::LogLine,
    sync::lock,
};

impl Registry {
    /// Acts on the crash records not processed yet: reports each (base log, the module's log, the
    /// `pedestal_module_crashes_total` metric), quarantines modules at the threshold, and puts
    /// the signal into the quarantine of a module whose load or start crashed the base (found by
    /// its marker). Call during the restore, before anything is loaded; save the ledger with
    /// [`Registry::save_crash_ledger`] once `state.json` holds the quarantines.
    pub(super) fn apply_crash_records(&self, quarantined: &mut Vec<Quarantined>) {
        let data_dir = self.store.data_dir();
        let mut ledger = crash::load_ledger(data_dir);
        let (records, offset, inode) = crash::read_new(data_dir, &ledger);
        let policy = Policy {
            quarantine_after: self.config.crash_quarantine_after,
            window_ms: self.config.crash_window.as_millis() as u64,
        };
        let verdicts = ledger.admit(&records, crash::now_ms(), policy);
        ledger.offset = offset;
        ledger.inode = inode;
        for verdict in &verdicts {
            self.act_on_crash(verdict, quarantined);
        }
        *lock(&self.crash_ledger) = ledger;
    }

    /// Records which crash records were processed (`<data-dir>/crashes.json`).
    pub(super) fn save_crash_ledger(&self) {
        // Under the lock, so a retry's clearing is never overwritten by an older copy.
        let ledger = lock(&self.crash_ledger);
        // Most starts find nothing new: no need for a synchronous write then.
        if crash::load_ledger(self.store.data_dir()) == *ledger {
            return;
        }
        if let Err(e) = crash::save_ledger(self.store.data_dir(), &ledger) {
            tracing::error!("cannot record which crash records were processed (they will be again): {e}");
        }
    }

    /// Stops counting the crashes of `name` from artifact `sha256` (its quarantine was lifted).
    pub(super) fn forgive_crashes(&self, sha256: &str, name: &str) {
        let mut ledger = lock(&self.crash_ledger);
        if ledger.clear(sha256, name) {
            let ledger = ledger.clone();
            if let Err(e) = crash::save_ledger(self.store.data_dir(), &ledger) {
                tracing::error!("cannot record the cleared crash count of {name}: {e}");
            }
        }
    }

    /// The crashes of the last window that were tied to a module, oldest first.
    pub fn crashes(&self) -> Vec<Crash> {
        lock(&self.crash_ledger).crashes().to_vec()
    }

    fn act_on_crash(&self, verdict: &Verdict, quarantined: &mut Vec<Quarantined>) {
        let record = &verdict.record;
        let (description, at) = (record.describe(), record.at());
        let Some(crash) = &verdict.crash else {
            tracing::error!(
                pid = record.pid,
                thread = %record.thread,
                signal = %record.signal,
                "the previous base process crashed with {description} at {at} in thread {:?}; not \
                 attributed to a module (a base thread, or a module thread that renamed itself and \
                 crashed outside its library)",
                record.thread
            );
            return;
        };
        let name = crash.name.clone().or_else(|| crash.install_name.clone());
        let version = crash.version.clone().unwrap_or_else(|| "-".into());
        let what = match &name {
            Some(name) => format!("{name}@{version}"),
            None => format!("artifact {}", crash.sha256),
        };
        let retry = super::durable::retry_hint(
            crash.name.as_deref(),
            crash.version.as_deref(),
            &crash.sha256,
            crash.install_name.as_deref(),
        );
        self.metrics.record_crash(name.as_deref().unwrap_or("-"), &version, &crash.signal);

        // A crash during its load or start: its marker quarantined it already.
        let marked = quarantined.iter_mut().find(|q| {
            q.sha256 == crash.sha256
                && match (&q.name, &crash.name) {
                    (Some(a), Some(b)) => a == b,
                    _ => q.install_name == crash.install_name,
                }
        });
        let outcome = match marked {
            Some(entry) => {
                if entry.signal.is_none() {
                    entry.reason = format!(
                        "the base process died while loading or starting it: it crashed the base \
                         with {description} at {at}; {retry}"
                    );
                    entry.signal = Some(crash.signal.clone());
                    entry.crashed_at = Some(at.clone());
                }
                "quarantined (it crashed while loading or starting)".to_owned()
            }
            None if verdict.quarantine => {
                let count = verdict.crashes_in_window;
                let window_s = self.config.crash_window.as_secs();
                let times = if count == 1 {
                    "its first crash".to_owned()
                } else {
                    format!("{count} crashes within {window_s} s")
                };
                quarantined.push(Quarantined {
                    name: crash.name.clone(),
                    version: crash.version.clone(),
                    sha256: crash.sha256.clone(),
                    install_name: crash.install_name.clone(),
                    reason: format!("crashed the base with {description} at {at} ({times}); {retry}"),
                    at: humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string(),
                    signal: Some(crash.signal.clone()),
                    crashed_at: Some(at.clone()),
                });
                format!("quarantined after {times}")
            }
            None => format!(
                "restored: {} of {} crashes within {} s quarantine it",
                verdict.crashes_in_window,
                self.config.crash_quarantine_after,
                self.config.crash_window.as_secs()
            ),
        };
        let message = format!(
            "{what} crashed the base with {description} at {at} (thread {}, attributed by {}); {outcome}",
            crash.thread, crash.attributed_by
        );
        tracing::error!(module = name.as_deref().unwrap_or("-"), %version, signal = %crash.signal, "{message}");
        if let Some(name) = &name {
            let fields = format!("signal={} pid={} thread={}", crash.signal, crash.pid, crash.thread);
            self.log(name).write(LogLine::new(
                LogLevel::Error,
                name,
                &version,
                "pedestal::crash",
                &message,
                &fields,
            ));
        }
    }
}

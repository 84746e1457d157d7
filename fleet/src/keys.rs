//! The key layout in etcd. Everything the fleet knows is under one prefix (`/pedestal/` unless
//! `--etcd-prefix` says otherwise); values are JSON documents of [`crate::model`].
//!
//! | key | value | written by | lifetime |
//! |---|---|---|---|
//! | `leader` | [`LeaderRecord`](crate::model::LeaderRecord) | the controller that won | its lease |
//! | `controllers/<id>` | [`ControllerRecord`](crate::model::ControllerRecord) | each controller | its lease |
//! | `specs/<module>` | [`SpecRecord`](crate::model::SpecRecord) | the leader (fenced) | until deleted |
//! | `artifacts/<sha256>` | [`ArtifactRecord`](crate::model::ArtifactRecord) | the leader (fenced) | until deleted |
//! | `bases/<id>` | [`BaseRecord`](crate::model::BaseRecord) | each base | its lease |
//! | `status/<id>` | [`BaseStatus`](crate::model::BaseStatus) | each base | its lease |
//! | `assign/<base>/<module>` | [`Assignment`](crate::model::Assignment) | the leader (fenced) | until re-placed |
//! | `placement/<module>` | [`PlacementRecord`](crate::model::PlacementRecord) | the leader (fenced) | with the spec |
//! | `endpoints/<module>` | [`Endpoints`](crate::model::Endpoints) | the leader (fenced) | with the spec |
//! | `rollouts/<module>` | [`RolloutRecord`](crate::model::RolloutRecord) | the leader (fenced) | with the spec |
//! | `rollout-history/<module>/<generation>` | [`RolloutRecord`](crate::model::RolloutRecord) | the leader (fenced) | the last 10 per module |
//! | `commands/<module>/<id>` | [`RolloutCommand`](crate::model::RolloutCommand) | any controller | until the leader applies it |
//! | `cordons/<base>` | [`CordonRecord`](crate::model::CordonRecord) | the leader (fenced) | until uncordoned |
//! | `scale/<module>` | [`ScaleRecord`](crate::model::ScaleRecord) | the leader (fenced) | with the spec |
//! | `sequence` | the term of the leader that last wrote | the leader (fenced), with each pass write | for good |
//!
//! Fencing: every write of the leader is a transaction whose first compare is
//! `create_revision(leader) == term`, the create revision of the leader key it put. A deposed
//! leader's key is gone (its lease expired) or is another controller's (another create
//! revision), so its transaction fails and nothing it wrote after losing commits. A reconcile
//! pass's transactions also compare and put `sequence` (its mod revision must be the one the
//! pass read, or its previous transaction left), so a stale write of the leader itself —
//! delayed, duplicated, or landing after its answer was lost — commits nothing either.

/// The default prefix.
pub const DEFAULT_PREFIX: &str = "/pedestal/";

/// The keys under one prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Default for Keys {
    fn default() -> Self {
        Self::new(DEFAULT_PREFIX)
    }
}

/// The leader key's name under the prefix.
pub const LEADER: &str = "leader";

impl Keys {
    /// Keys under `prefix` (a trailing `/` is added if missing).
    pub fn new(prefix: &str) -> Self {
        let mut prefix = prefix.to_owned();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { prefix }
    }

    /// The prefix itself, ending in `/`.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The leader key.
    pub fn leader(&self) -> String {
        format!("{}{LEADER}", self.prefix)
    }

    /// The leader's write sequence (see the module docs).
    pub fn sequence(&self) -> String {
        format!("{}sequence", self.prefix)
    }

    /// All controllers (a prefix).
    pub fn controllers(&self) -> String {
        format!("{}controllers/", self.prefix)
    }

    /// One controller.
    pub fn controller(&self, id: &str) -> String {
        format!("{}{id}", self.controllers())
    }

    /// All specs (a prefix).
    pub fn specs(&self) -> String {
        format!("{}specs/", self.prefix)
    }

    /// One module's spec.
    pub fn spec(&self, module: &str) -> String {
        format!("{}{module}", self.specs())
    }

    /// All artifacts (a prefix).
    pub fn artifacts(&self) -> String {
        format!("{}artifacts/", self.prefix)
    }

    /// One artifact.
    pub fn artifact(&self, sha256: &str) -> String {
        format!("{}{sha256}", self.artifacts())
    }

    /// All bases (a prefix).
    pub fn bases(&self) -> String {
        format!("{}bases/", self.prefix)
    }

    /// One base.
    pub fn base(&self, id: &str) -> String {
        format!("{}{id}", self.bases())
    }

    /// All bases' status reports (a prefix).
    pub fn statuses(&self) -> String {
        format!("{}status/", self.prefix)
    }

    /// One base's status report.
    pub fn status(&self, id: &str) -> String {
        format!("{}{id}", self.statuses())
    }

    /// All assignments (a prefix).
    pub fn assignments(&self) -> String {
        format!("{}assign/", self.prefix)
    }

    /// One base's assignments (a prefix: what its agent watches).
    pub fn assignments_of(&self, base: &str) -> String {
        format!("{}{base}/", self.assignments())
    }

    /// One module's assignment to one base.
    pub fn assignment(&self, base: &str, module: &str) -> String {
        format!("{}{module}", self.assignments_of(base))
    }

    /// All placements (a prefix).
    pub fn placements(&self) -> String {
        format!("{}placement/", self.prefix)
    }

    /// One module's placement.
    pub fn placement(&self, module: &str) -> String {
        format!("{}{module}", self.placements())
    }

    /// All endpoints (a prefix).
    pub fn all_endpoints(&self) -> String {
        format!("{}endpoints/", self.prefix)
    }

    /// One module's endpoints.
    pub fn endpoints(&self, module: &str) -> String {
        format!("{}{module}", self.all_endpoints())
    }

    /// All rollouts (a prefix).
    pub fn rollouts(&self) -> String {
        format!("{}rollouts/", self.prefix)
    }

    /// One module's rollout.
    pub fn rollout(&self, module: &str) -> String {
        format!("{}{module}", self.rollouts())
    }

    /// All finished rollouts (a prefix).
    pub fn all_rollout_history(&self) -> String {
        format!("{}rollout-history/", self.prefix)
    }

    /// One module's finished rollouts (a prefix).
    pub fn rollout_history(&self, module: &str) -> String {
        format!("{}{module}/", self.all_rollout_history())
    }

    /// One finished rollout, by the generation that started it (zero-padded: keys sort by it).
    pub fn rollout_history_entry(&self, module: &str, generation: u64) -> String {
        format!("{}{generation:020}", self.rollout_history(module))
    }

    /// All pending rollout commands (a prefix).
    pub fn all_commands(&self) -> String {
        format!("{}commands/", self.prefix)
    }

    /// One module's pending commands (a prefix).
    pub fn commands(&self, module: &str) -> String {
        format!("{}{module}/", self.all_commands())
    }

    /// One command.
    pub fn command(&self, module: &str, id: &str) -> String {
        format!("{}{id}", self.commands(module))
    }

    /// All cordons (a prefix).
    pub fn cordons(&self) -> String {
        format!("{}cordons/", self.prefix)
    }

    /// One base's cordon.
    pub fn cordon(&self, base: &str) -> String {
        format!("{}{base}", self.cordons())
    }

    /// All autoscaled replica counts (a prefix).
    pub fn scales(&self) -> String {
        format!("{}scale/", self.prefix)
    }

    /// One module's autoscaled replica count.
    pub fn scale(&self, module: &str) -> String {
        format!("{}{module}", self.scales())
    }

    /// The last path segment of `key` under `prefix` (`specs/greeter` → `greeter`), or `None`
    /// when `key` is not directly under it.
    pub fn leaf<'k>(key: &'k str, prefix: &str) -> Option<&'k str> {
        key.strip_prefix(prefix).filter(|rest| !rest.is_empty() && !rest.contains('/'))
    }
}

/// A base id, module name or controller id usable in a key: 1 to 64 of `[A-Za-z0-9_.-]`.
pub fn is_valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_nest_under_the_prefix() {
        let keys = Keys::new("/p");
        assert_eq!(keys.assignment("b1", "greeter"), "/p/assign/b1/greeter");
        assert_eq!(Keys::leaf("/p/assign/b1/greeter", &keys.assignments_of("b1")), Some("greeter"));
        assert_eq!(Keys::leaf("/p/assign/b1/x/y", &keys.assignments_of("b1")), None);
        assert_eq!(keys.leader(), "/p/leader");
    }

    #[test]
    fn ids_are_key_safe() {
        assert!(is_valid_id("base-1.zone_a"));
        assert!(!is_valid_id("a/b"));
        assert!(!is_valid_id(""));
    }
}

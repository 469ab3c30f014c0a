//! What Kubernetes discovery (`kube`) asks of the daemon besides attaching: whether a pod's
//! cgroup is served already (and under which profile), and gate exemptions for pods the
//! operator exempted, made and removed as those pods come and go.

use super::{Daemon, DaemonError};
use crate::cgroup::Cgroup;

impl Daemon {
    /// The profile the cgroup `id` is served with, if it is.
    pub async fn served_profile(&self, id: u64) -> Option<String> {
        self.attachments
            .lock()
            .await
            .get(&id)
            .map(|r| r.attachment.profile.clone())
    }

    /// Exempts `cg` from the gate that covers it: true if one does (without a gate there is
    /// nothing to exempt it from).
    pub fn exempt(&self, cg: &Cgroup) -> Result<bool, DaemonError> {
        Ok(self.gates().exempt(cg)?)
    }

    /// Removes an exemption [`Daemon::exempt`] made (the cgroup may be gone already).
    pub fn unexempt(&self, id: u64) {
        self.gates().unexempt(id);
    }

    /// Whether `cg` is below a gated parent.
    pub fn is_gated(&self, cg: &Cgroup) -> bool {
        self.gates().gated(cg)
    }

    /// Whether any gate is configured.
    pub fn has_gates(&self) -> bool {
        !self.gates().parents.is_empty()
    }
}

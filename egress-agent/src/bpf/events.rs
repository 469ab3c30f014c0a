//! Kernel layer: denials from the `eg_events` ring buffer, decoded into tracing events
//! and handed to a sink (the audit log, the status endpoint, metrics).

use aya::maps::{MapData, RingBuf};

use super::maps::{EgressEvent, Hook};

/// Read events until the ring buffer's fd fails; call `sink` for each.
pub async fn run(ring: RingBuf<MapData>, mut sink: impl FnMut(EgressEvent)) -> std::io::Result<()> {
    let mut fd = crate::sys::async_fd(ring)?;
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            let Some(ev) = crate::sys::read_pod::<EgressEvent>(&item) else {
                continue;
            };
            trace(&ev);
            sink(ev);
        }
        guard.clear_ready();
    }
}

fn trace(ev: &EgressEvent) {
    let hook = Hook::from_u8(ev.hook).map(Hook::label).unwrap_or("?");
    let dst = ev.destination().map(|d| d.to_string()).unwrap_or_default();
    // Debug, not info: every denial is already an audit record and a counter,
    // and a sandbox hammering a denied address must not flood the agent's log.
    tracing::debug!(
        target: "egress::kernel",
        hook,
        reason = ev.reason,
        cgroup_id = ev.cgroup_id,
        pid = ev.tgid,
        comm = ev.comm(),
        dst = %dst,
        "kernel denied"
    );
}

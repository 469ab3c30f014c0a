//! Control plane: the signals every long-running command obeys: SIGTERM and SIGINT end it, SIGHUP reloads.

use tokio::signal::unix::{signal, SignalKind};

/// Until SIGTERM or SIGINT; `on_hup` runs for every SIGHUP (a reload).
pub async fn wait_for_shutdown<F: std::future::Future<Output = ()>>(mut on_hup: impl FnMut() -> F) {
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => on_hup().await,
        }
    }
}

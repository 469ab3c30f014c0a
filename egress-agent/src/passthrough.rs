//! Stage: passthrough — an allowed connection that is not inspected. The bytes read while
//! peeking are replayed to the upstream the agent dialed, then both directions are copied
//! ([`crate::copy`]) until both are done or either side resets.

use std::sync::Arc;

use tokio::net::TcpStream;

use crate::{
    budget::{Dir, Meter},
    copy::{self, Disconnect, Stop, Transferred},
};

/// How a spliced connection ended.
pub struct Outcome {
    pub transferred: Transferred,
    /// Why it ended early, if it did (the peer got a reset too).
    pub ended_by: Option<Disconnect>,
}

/// Replays `peeked`, then copies both ways, charging every byte to `meter` (the budgets: a
/// copy over one stops at its limit). The caller's set-up state should be gone by now: a
/// spliced connection may stay open for hours and its task should hold little more than the
/// two sockets.
pub async fn splice(
    client: TcpStream,
    peeked: Vec<u8>,
    mut upstream: TcpStream,
    meter: Option<Arc<Meter>>,
) -> Outcome {
    let meter_up = meter.as_deref().map(|m| (m, Dir::Up));
    match copy::write_charged(&mut upstream, &peeked, meter_up).await {
        Ok(()) => {}
        Err(Stop::Budget(x)) => {
            copy::cut(client, upstream, Dir::Up).await;
            return Outcome {
                transferred: Transferred {
                    up: x.allowed,
                    down: 0,
                },
                ended_by: Some(Disconnect::OverBudget(x)),
            };
        }
        Err(Stop::Io(_)) => {
            return Outcome {
                transferred: Transferred::default(),
                ended_by: None,
            }
        }
    }
    let replayed = peeked.len() as u64;
    drop(peeked);
    let (mut transferred, ended_by) = copy::bidirectional(client, upstream, meter.as_deref()).await;
    transferred.up += replayed;
    Outcome {
        transferred,
        ended_by,
    }
}

//! Stage: passthrough — an allowed connection that is not inspected. The bytes read while
//! peeking are replayed to the upstream the agent dialed, then both directions are copied
//! ([`crate::copy`]) until both are done or either side resets.

use tokio::{io::AsyncWriteExt, net::TcpStream};

use crate::copy::{self, Disconnect, Transferred};

/// How a spliced connection ended.
pub struct Outcome {
    pub transferred: Transferred,
    /// Why it ended early, if it did (the peer got a reset too).
    pub ended_by: Option<Disconnect>,
}

/// Replays `peeked`, then copies both ways. The caller's set-up state should be gone by now:
/// a spliced connection may stay open for hours and its task should hold little more than
/// the two sockets.
pub async fn splice(client: TcpStream, peeked: Vec<u8>, mut upstream: TcpStream) -> Outcome {
    if !peeked.is_empty() && upstream.write_all(&peeked).await.is_err() {
        return Outcome {
            transferred: Transferred::default(),
            ended_by: None,
        };
    }
    drop(peeked);
    let (transferred, ended_by) = copy::bidirectional(client, upstream).await;
    Outcome {
        transferred,
        ended_by,
    }
}

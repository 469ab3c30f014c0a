//! Request bodies charged to the connection's budgets on their way upstream: a body that goes
//! over one is sent up to the limit and then fails, which aborts the upstream request; the
//! request is then answered with the budget's denial ([`Cut`] says which).

use std::{
    pin::Pin,
    sync::{Arc, OnceLock},
    task::{ready, Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::budget::{Dir, Exceeded, Meter};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Set when a body was cut: the budget it went over.
pub type Cut = Arc<OnceLock<Exceeded>>;

/// The error a cut body ends with.
#[derive(Debug, thiserror::Error)]
#[error("{}", .0.reason)]
pub struct OverBudget(pub Exceeded);

/// A client's request body on its way upstream.
pub struct UpBody {
    inner: Incoming,
    meter: Option<Arc<Meter>>,
    cut: Cut,
    /// The error to end with after the last bytes that fitted.
    failing: Option<Exceeded>,
}

impl UpBody {
    pub fn new(inner: Incoming, meter: Option<Arc<Meter>>, cut: Cut) -> Self {
        Self {
            inner,
            meter,
            cut,
            failing: None,
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(x) = this.failing.take() {
            return Poll::Ready(Some(Err(Box::new(OverBudget(x)))));
        }
        let frame = match ready!(Pin::new(&mut this.inner).poll_frame(cx)) {
            Some(Ok(f)) => f,
            Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
            None => return Poll::Ready(None),
        };
        let (Some(m), Some(data)) = (&this.meter, frame.data_ref()) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let Err(x) = m.charge(Dir::Up, data.len() as u64) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let fits = data.slice(..x.allowed as usize);
        let _ = this.cut.set(x.clone());
        if fits.is_empty() {
            return Poll::Ready(Some(Err(Box::new(OverBudget(x)))));
        }
        this.failing = Some(x);
        Poll::Ready(Some(Ok(Frame::data(fits))))
    }

    fn is_end_stream(&self) -> bool {
        self.failing.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

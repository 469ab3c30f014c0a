//! Bodies charged to the connection's budgets: a request body on its way upstream, a response
//! body on its way to the client. One that goes over a budget relays the bytes that fit, then
//! fails — which aborts the upstream request, or cuts the response — and says which budget
//! ([`Charged::cut`]; for a request body, also the shared [`Cut`] its handler answers from).

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
pub type UpBody = Charged<Incoming>;

/// A body whose data frames are charged to a meter (without one it is passed as it is).
pub struct Charged<B> {
    inner: B,
    meter: Option<(Arc<Meter>, Dir, Cut)>,
    /// The error to end with after the last bytes that fitted.
    failing: Option<Exceeded>,
}

impl<B> Charged<B> {
    /// `cut` is set, when the body is cut, to the budget it went over.
    pub fn new(inner: B, meter: Option<(Arc<Meter>, Dir, Cut)>) -> Self {
        Self {
            inner,
            meter,
            failing: None,
        }
    }

    /// The budget this body went over, once it was cut.
    pub fn cut(&self) -> Option<&Exceeded> {
        self.meter.as_ref().and_then(|(_, _, cut)| cut.get())
    }

    /// The bytes of `frame` that fit; a cut leaves the error for the next poll.
    fn charge(&mut self, frame: Frame<Bytes>) -> Result<Frame<Bytes>, Exceeded> {
        let (Some((m, dir, cut)), Some(data)) = (&self.meter, frame.data_ref()) else {
            return Ok(frame);
        };
        let Err(x) = m.charge(*dir, data.len() as u64) else {
            return Ok(frame);
        };
        let fits = data.slice(..x.allowed as usize);
        let _ = cut.set(x.clone());
        if fits.is_empty() {
            return Err(x);
        }
        self.failing = Some(x);
        Ok(Frame::data(fits))
    }
}

impl<B> Body for Charged<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
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
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            None => return Poll::Ready(None),
        };
        Poll::Ready(Some(
            this.charge(frame)
                .map_err(|x| Box::new(OverBudget(x)) as BoxError),
        ))
    }

    fn is_end_stream(&self) -> bool {
        self.failing.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

//! A response body that streams a blob from the store a chunk at a time.

use crate::store::BlobReader;
use crate::AssetError;
use axum::body::Bytes;
use http_body::{Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tessera_persistence::StoreError;
use tokio::task::JoinHandle;

type Read = JoinHandle<(BlobReader, Result<Option<Vec<u8>>, AssetError>)>;

/// Streams what a [`BlobReader`] reads, one piece (at most one stored chunk) per frame. A piece
/// is read only when hyper asks for the next frame, that is once the previous one is on its
/// way, so a response holds about one chunk in memory however large the blob and however slow
/// the client. Each read runs on the blocking pool and holds a blocking thread only for the
/// read itself, never while waiting for the client. Its exact size is known, so the answer
/// carries `Content-Length`.
pub(crate) struct BlobBody {
    /// `None` while a read is under way, and at the end.
    reader: Option<BlobReader>,
    reading: Option<Read>,
    remaining: u64,
}

impl BlobBody {
    pub(crate) fn new(reader: BlobReader) -> BlobBody {
        BlobBody {
            remaining: reader.remaining(),
            reader: Some(reader),
            reading: None,
        }
    }
}

impl http_body::Body for BlobBody {
    type Data = Bytes;
    type Error = AssetError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, AssetError>>> {
        let this = self.get_mut();
        let reading = match &mut this.reading {
            Some(reading) => reading,
            None => {
                let Some(mut reader) = this.reader.take().filter(|r| r.remaining() > 0) else {
                    return Poll::Ready(None);
                };
                this.reading.insert(tokio::task::spawn_blocking(move || {
                    let piece = reader.next_piece();
                    (reader, piece)
                }))
            }
        };
        let joined = ready!(Pin::new(reading).poll(cx));
        this.reading = None;
        let failed = |err: AssetError| {
            tracing::warn!(error = %err, "a blob download broke off");
            Poll::Ready(Some(Err(err)))
        };
        match joined {
            Ok((reader, Ok(Some(piece)))) => {
                this.remaining = reader.remaining();
                this.reader = Some(reader);
                metrics::counter!("tessera_asset_bytes_sent_total").increment(piece.len() as u64);
                Poll::Ready(Some(Ok(Frame::data(Bytes::from(piece)))))
            }
            Ok((_, Ok(None))) => failed(AssetError::Store(StoreError::Corrupt(format!(
                "the blob ended {} bytes early",
                this.remaining
            )))),
            Ok((_, Err(err))) => failed(err),
            Err(err) => failed(AssetError::Store(StoreError::Unavailable(format!(
                "the blob read stopped: {err}"
            )))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0 && self.reading.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

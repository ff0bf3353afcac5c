//! Bridges an async byte stream to the blocking `Read` the unpacker consumes, through a small
//! bounded channel: a layer is never held in memory, and a slow disk slows the download down.

use std::io::{self, Read};

use bytes::{Buf, Bytes};
use tokio::sync::mpsc;

/// Chunks in flight per layer: enough to keep the network and the unpacker both busy.
pub const DEPTH: usize = 32;

pub struct ChannelReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
}

pub fn channel() -> (mpsc::Sender<io::Result<Bytes>>, ChannelReader) {
    let (tx, rx) = mpsc::channel(DEPTH);
    (
        tx,
        ChannelReader {
            rx,
            current: Bytes::new(),
        },
    )
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bytes_and_errors_arrive_in_order() {
        let (tx, mut reader) = channel();
        let reading = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            let err = reader.read_to_end(&mut out).unwrap_err();
            (out, err.to_string())
        });
        tx.send(Ok(Bytes::from_static(b"hello "))).await.unwrap();
        tx.send(Ok(Bytes::from_static(b"world"))).await.unwrap();
        tx.send(Err(io::Error::other("digest mismatch")))
            .await
            .unwrap();
        let (out, err) = reading.await.unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(err, "digest mismatch");
    }
}

//! Background writeback while layers unpack. Left alone, the kernel starts writing a
//! build's dirty pages only past its dirty threshold (gigabytes on a large node), so the
//! whole image would be written at freeze time, after the CPU-bound unpacking is over.
//! Syncing the filesystem every so often moves that I/O under the unpacking instead.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::sys::Sys;

const EVERY: Duration = Duration::from_millis(200);

pub struct Flusher {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

pub fn start(sys: Arc<dyn Sys>, mountpoint: PathBuf) -> Flusher {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = &mut stopped => return,
                _ = tokio::time::sleep(EVERY) => {}
            }
            let (sys, mountpoint) = (sys.clone(), mountpoint.clone());
            // A failure here shows again, and is reported, at the final sync before freezing.
            let _ = tokio::task::spawn_blocking(move || sys.syncfs(&mountpoint)).await;
        }
    });
    Flusher { stop, task }
}

impl Flusher {
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

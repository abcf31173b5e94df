//! Group commit of sled to disk.

use std::sync::Arc;

use super::Store;

/// Why a flush did not make the writes durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FlushError {
    /// sled's flush failed (shared: one flush answers every waiter).
    #[error("sled flush")]
    Sled(#[source] Arc<sled::Error>),
    /// The flush task is gone (it panicked, or the runtime is shutting down).
    #[error("the flush task stopped")]
    Stopped,
}

impl FlushError {
    /// A disk error may pass on the next flush; a flush task that is gone stays gone.
    pub fn is_transient(&self) -> bool {
        matches!(self, FlushError::Sled(e) if matches!(**e, sled::Error::Io(_)))
    }
}

type Waiter = tokio::sync::oneshot::Sender<Result<(), FlushError>>;

/// Group commit for the whole store: every partition worker asks for durability, one
/// task flushes sled once for everyone who asked before that flush began.
///
/// One flush per batch per partition would mean a dozen fsyncs where one does, which is
/// what starved the machine at 5,000 webhooks/s. The flush is sled's synchronous one on
/// a blocking thread on purpose: sled 0.34's `flush_async` deadlocks when several tasks
/// await it at once (spacejam/sled#1308, fixed only on its unreleased main branch).
#[derive(Debug, Clone)]
pub struct Flusher {
    tx: tokio::sync::mpsc::UnboundedSender<Waiter>,
}

impl Flusher {
    /// Start the flush task for `store` (needs a tokio runtime).
    pub fn start(store: &Store) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Waiter>();
        let db = store.db.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let db = db.clone();
                let r = tokio::task::spawn_blocking(move || {
                    db.flush().map(|_| ()).map_err(|e| FlushError::Sled(Arc::new(e)))
                })
                .await
                .unwrap_or(Err(FlushError::Stopped));
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            }
        });
        Self { tx }
    }

    /// Wait until everything written before this call is on disk.
    pub async fn flush(&self) -> Result<(), FlushError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(tx).map_err(|_| FlushError::Stopped)?;
        rx.await.map_err(|_| FlushError::Stopped)?
    }
}

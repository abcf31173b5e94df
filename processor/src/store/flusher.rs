//! Group commit of sled to disk.

use super::Store;

/// Group commit for the whole store: every partition worker asks for durability, one
/// task flushes sled once for everyone who asked before that flush began.
///
/// One flush per batch per partition would mean a dozen fsyncs where one does, which is
/// what starved the machine at 5,000 webhooks/s. The flush is sled's synchronous one on
/// a blocking thread on purpose: sled 0.34's `flush_async` deadlocks when several tasks
/// await it at once (spacejam/sled#1308, fixed only on its unreleased main branch).
#[derive(Debug, Clone)]
pub struct Flusher {
    tx: tokio::sync::mpsc::UnboundedSender<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

impl Flusher {
    /// Start the flush task for `store` (needs a tokio runtime).
    pub fn start(store: &Store) -> Self {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<tokio::sync::oneshot::Sender<Result<(), String>>>();
        let db = store.db.clone();
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut waiters = vec![first];
                while let Ok(w) = rx.try_recv() {
                    waiters.push(w);
                }
                let db = db.clone();
                let r = tokio::task::spawn_blocking(move || db.flush().map(|_| ()).map_err(|e| e.to_string()))
                    .await
                    .unwrap_or_else(|e| Err(e.to_string()));
                for w in waiters {
                    let _ = w.send(r.clone());
                }
            }
        });
        Self { tx }
    }

    /// Wait until everything written before this call is on disk.
    pub async fn flush(&self) -> Result<(), String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.tx.send(tx).map_err(|_| "flusher stopped".to_owned())?;
        rx.await.map_err(|_| "flusher stopped".to_owned())?
    }
}

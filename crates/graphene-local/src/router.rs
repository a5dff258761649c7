//! Routes a function's calls to idle workers: the worker of the ready
//! replica with the fewest calls in flight, never one of a replica that is
//! draining or gone. When no worker is idle, calls wait in a bounded queue
//! and get workers in arrival order as they free up or new replicas start.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;
use tokio::sync::oneshot;

use crate::replica::Replica;

/// Shared between one start of a runner process and its workers'
/// connections: ended when the process exits.
#[derive(Debug)]
pub struct Liveness(AtomicBool);

impl Liveness {
    pub fn new() -> Arc<Self> {
        Arc::new(Self(AtomicBool::new(true)))
    }
    pub fn is_alive(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
    pub fn end(&self) {
        self.0.store(false, Ordering::Release)
    }
}

/// A worker's connection. The worker leaves its replica when it drops.
pub struct WorkerConn {
    pub stream: UnixStream,
    pub pid: u32,
    pub replica: Arc<Replica>,
    pub alive: Arc<Liveness>,
}

impl WorkerConn {
    fn routable(&self) -> bool {
        self.alive.is_alive() && self.replica.routable()
    }
}

impl Drop for WorkerConn {
    fn drop(&mut self) {
        self.replica.worker_left(self.pid);
    }
}

#[derive(Default)]
pub struct Router {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    idle: Vec<WorkerConn>,
    waiters: VecDeque<oneshot::Sender<WorkerConn>>,
}

pub enum Take<'a> {
    Now(WorkerConn),
    /// No idle worker: the call holds a place in the queue.
    Queued(Waiter<'a>),
    /// No idle worker and the queue is full.
    Full,
}

/// A place in the queue. Dropped after a worker was handed to it but before
/// it was taken (the caller gave up at that moment), the worker goes back.
pub struct Waiter<'a> {
    rx: oneshot::Receiver<WorkerConn>,
    router: &'a Router,
}

impl Waiter<'_> {
    /// The next worker for this call; `None` when the router is gone.
    pub async fn recv(&mut self) -> Option<WorkerConn> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.rx.close();
        if let Ok(conn) = self.rx.try_recv() {
            self.router.put(conn);
        }
    }
}

impl Router {
    /// Gives an idle worker to the longest-waiting call, or keeps it.
    pub fn put(&self, conn: WorkerConn) {
        if !conn.routable() {
            return;
        }
        let mut inner = self.inner.lock().expect("router lock");
        let mut conn = conn;
        while let Some(waiter) = inner.waiters.pop_front() {
            match waiter.send(conn) {
                Ok(()) => return,
                Err(back) => conn = back,
            }
        }
        inner.idle.push(conn);
    }

    /// An idle worker of the least busy ready replica, else a place in the
    /// queue (at most `limit` calls wait).
    pub fn take(&self, limit: usize) -> Take<'_> {
        let mut inner = self.inner.lock().expect("router lock");
        inner.idle.retain(WorkerConn::routable);
        let best = inner
            .idle
            .iter()
            .enumerate()
            .min_by_key(|(_, c)| c.replica.busy())
            .map(|(i, _)| i);
        if let Some(i) = best {
            return Take::Now(inner.idle.swap_remove(i));
        }
        inner.waiters.retain(|w| !w.is_closed());
        if inner.waiters.len() >= limit {
            return Take::Full;
        }
        let (tx, rx) = oneshot::channel();
        inner.waiters.push_back(tx);
        Take::Queued(Waiter { rx, router: self })
    }

    /// Drops idle workers of replicas that stopped taking calls.
    pub fn purge(&self) {
        let gone: Vec<WorkerConn> = {
            let mut inner = self.inner.lock().expect("router lock");
            let (keep, gone) = std::mem::take(&mut inner.idle)
                .into_iter()
                .partition(WorkerConn::routable);
            inner.idle = keep;
            gone
        };
        drop(gone);
    }

    /// Calls waiting for a worker now.
    pub fn queued(&self) -> u64 {
        let inner = self.inner.lock().expect("router lock");
        inner.waiters.iter().filter(|w| !w.is_closed()).count() as u64
    }
}

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
    /// May take a call.
    fn routable(&self) -> bool {
        self.alive.is_alive() && self.replica.routable()
    }

    /// Kept, though perhaps not routable: a draining replica's workers stay
    /// connected until the replica ends (closing them early would look like
    /// crashes to the warm parent).
    fn keep(&self) -> bool {
        self.alive.is_alive() && !self.replica.is_stopped()
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

/// A worker handed out counts as busy on its replica from that moment (under
/// the router's lock, so a replica that starts draining sees it); the caller
/// ends the count with `Replica::call_ended`.
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
            conn.replica.call_ended();
            self.router.put(conn);
        }
    }
}

impl Router {
    /// Gives an idle worker to the longest-waiting call, or keeps it.
    pub fn put(&self, conn: WorkerConn) {
        if !conn.keep() {
            return;
        }
        let mut inner = self.inner.lock().expect("router lock");
        if !conn.routable() {
            inner.idle.push(conn);
            return;
        }
        let mut conn = conn;
        while let Some(waiter) = inner.waiters.pop_front() {
            let replica = conn.replica.clone();
            match waiter.send(conn) {
                Ok(()) => {
                    replica.call_started();
                    return;
                }
                Err(back) => conn = back,
            }
        }
        inner.idle.push(conn);
    }

    /// An idle worker of the least busy ready replica, else a place in the
    /// queue (at most `limit` calls wait).
    pub fn take(&self, limit: usize) -> Take<'_> {
        let mut inner = self.inner.lock().expect("router lock");
        inner.idle.retain(WorkerConn::keep);
        let best = inner
            .idle
            .iter()
            .enumerate()
            .filter(|(_, c)| c.routable())
            .min_by_key(|(_, c)| c.replica.busy())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let conn = inner.idle.swap_remove(i);
            conn.replica.call_started();
            return Take::Now(conn);
        }
        inner.waiters.retain(|w| !w.is_closed());
        if inner.waiters.len() >= limit {
            return Take::Full;
        }
        let (tx, rx) = oneshot::channel();
        inner.waiters.push_back(tx);
        Take::Queued(Waiter { rx, router: self })
    }

    /// Fails every waiting call (the function is removed).
    pub fn close(&self) {
        let waiters = std::mem::take(&mut self.inner.lock().expect("router lock").waiters);
        drop(waiters);
    }

    /// Runs `f` (a replica starting to drain) while no worker is handed out.
    pub fn while_locked(&self, f: impl FnOnce()) {
        let _handing_out = self.inner.lock().expect("router lock");
        f();
    }

    /// Drops the connections of workers that ended or whose replica did.
    pub fn purge(&self) {
        let gone: Vec<WorkerConn> = {
            let mut inner = self.inner.lock().expect("router lock");
            let (keep, gone) = std::mem::take(&mut inner.idle)
                .into_iter()
                .partition(WorkerConn::keep);
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

//! Idle worker connections of a function, shared by all its replicas. A call
//! takes one (waiting if every worker is busy) and gives it back after the
//! response; connections of a replica that stopped are dropped on the way.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::UnixStream;
use tokio::sync::Semaphore;

/// Shared between a replica incarnation and its workers' connections.
#[derive(Debug, Default)]
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

pub struct WorkerConn {
    pub stream: UnixStream,
    pub pid: u32,
    pub replica: Arc<crate::replica::Replica>,
    pub alive: Arc<Liveness>,
    pub control: Arc<crate::replica::Control>,
}

/// A connection leaves the count of its replica's workers when it goes
/// (worker died, timed out, replaced); a stopped replica's count is reset
/// as a whole.
impl Drop for WorkerConn {
    fn drop(&mut self) {
        if self.alive.is_alive() {
            let _ = self.replica.workers.fetch_update(
                std::sync::atomic::Ordering::Relaxed,
                std::sync::atomic::Ordering::Relaxed,
                |n| Some(n.saturating_sub(1)),
            );
        }
    }
}

pub struct WorkerPool {
    idle: Mutex<VecDeque<WorkerConn>>,
    permits: Semaphore,
}

impl Default for WorkerPool {
    fn default() -> Self {
        Self {
            idle: Mutex::new(VecDeque::new()),
            permits: Semaphore::new(0),
        }
    }
}

impl WorkerPool {
    /// Always one permit per idle connection.
    pub fn put(&self, conn: WorkerConn) {
        self.idle.lock().expect("pool lock").push_back(conn);
        self.permits.add_permits(1);
    }

    /// Waits for an idle worker of a live replica.
    pub async fn take(&self) -> WorkerConn {
        loop {
            self.permits
                .acquire()
                .await
                .expect("pool semaphore is never closed")
                .forget();
            let conn = self.idle.lock().expect("pool lock").pop_front();
            match conn {
                Some(c) if c.alive.is_alive() => return c,
                _ => continue,
            }
        }
    }
}

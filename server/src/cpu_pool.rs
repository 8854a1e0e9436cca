//! CPU-heavy request work (tokenizing and detokenizing text) runs here, off the async workers:
//! a few megabytes of prompt take seconds of CPU, and on a worker thread that would stall every
//! other connection the worker serves, `/health` included. At most `slots` jobs run at once, on
//! tokio's blocking threads; more wait their turn without holding a thread.

use tokio::sync::Semaphore;

pub struct CpuPool {
    slots: Semaphore,
}

impl CpuPool {
    pub fn new(slots: usize) -> CpuPool {
        CpuPool { slots: Semaphore::new(slots.max(1)) }
    }

    /// One slot per core this process may use.
    pub fn per_core() -> CpuPool {
        CpuPool::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// Runs `f` on a blocking thread once a slot is free.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let _slot = self.slots.acquire().await.expect("the pool's semaphore is never closed");
        match tokio::task::spawn_blocking(f).await {
            Ok(v) => v,
            // A panic in `f` is the handler's panic: it fails this request alone (see `http.rs`).
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }
}

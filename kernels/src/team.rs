//! The kernels' parallel loops: [`for_each`] and [`for_each_mut`] split `n` tasks over the
//! [`Team`] installed on this thread, or over rayon's pool where none is.
//!
//! Why a team of our own: a rayon worker with nothing to steal yields a few dozen times and
//! then sleeps on a futex, and waking it costs 18 us on this project's 2-core VM (34 us on a
//! 16-core one) against 0.1 us back to back. A decode step forks ~60 times, each product a few
//! tens of microseconds of work, and a worker that finished its chunks early is asleep by the
//! next one: `perf` put 6% of a batch-1 f32 decode in the scheduler. A team's helpers spin for
//! [`SPIN`] after their last task before they park, so within a forward pass every loop finds
//! them awake (rayon or a spinning pool was chosen from those figures; llama.cpp's and ONNX
//! Runtime's pools spin likewise).

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::Ordering::{AcqRel, Acquire, Relaxed, Release, SeqCst};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle, Thread};
use std::time::{Duration, Instant};

use rayon::prelude::*;

/// How long a helper spins after its last task before it parks: longer than the gaps inside a
/// forward pass (attention, sampling, the scheduler's bookkeeping: tens of microseconds), short
/// enough that an idle server stops burning its cores at once.
pub const SPIN: Duration = Duration::from_micros(500);

/// After this long idle a spinning helper also yields its core between looks.
const YIELD_AFTER: Duration = Duration::from_micros(50);

/// `Shared::state`: the job's epoch in the upper 32 bits, [`OPEN`] while helpers may join it,
/// and in the bits below it the number of helpers that joined and have not yet left.
const OPEN: u64 = 1 << 31;
const JOINED: u64 = OPEN - 1;

/// One participant's share of a loop's tasks, `next..end`, taken one at a time. Aligned to
/// two cache lines so that participants' counters do not share one.
#[repr(align(128))]
#[derive(Default)]
struct Share {
    next: AtomicUsize,
    end: AtomicUsize,
}

/// One parallel loop: tasks `0..tasks` of `f`, cut into one contiguous share per participant
/// (so a thread runs neighbouring chunks, whose weights lie next to each other in memory, as
/// rayon's halving did); a participant that has emptied its own share takes from the others'.
struct Job<'a> {
    f: &'a (dyn Fn(usize) + Sync),
    shares: &'a [Share],
    stopped: AtomicBool,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

impl Job<'_> {
    /// Runs tasks, from share `me` on, until none are left. A panicking task stops the
    /// hand-out (the caller re-raises the first panic once every participant has left).
    fn work(&self, me: usize) {
        let n = self.shares.len();
        for step in 0..n {
            let share = &self.shares[(me + step) % n];
            let end = share.end.load(Relaxed);
            while !self.stopped.load(Relaxed) {
                let i = share.next.fetch_add(1, Relaxed);
                if i >= end {
                    break;
                }
                if let Err(p) = panic::catch_unwind(AssertUnwindSafe(|| (self.f)(i))) {
                    self.stopped.store(true, Relaxed);
                    self.panic.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(p);
                }
            }
        }
    }
}

struct Shared {
    /// One per participant (the caller's first), rewritten by the caller for each loop.
    shares: Box<[Share]>,
    state: AtomicU64,
    job: AtomicPtr<Job<'static>>,
    asleep: AtomicUsize,
    stop: AtomicBool,
}

struct Inner {
    shared: Arc<Shared>,
    helpers: Vec<Thread>,
    /// Set while a loop runs: a second thread calling in meanwhile runs its loop alone.
    busy: AtomicBool,
}

/// The calling thread plus `threads - 1` helper threads that run the kernels' parallel loops
/// while it is [installed](Team::install) on the calling thread.
pub struct Team {
    inner: Arc<Inner>,
    handles: Vec<JoinHandle<()>>,
}

thread_local! {
    /// The team [`Team::install`] put on this thread.
    static CURRENT: RefCell<Option<Arc<Inner>>> = const { RefCell::new(None) };
    /// Inside a task (always, on a helper): loops nested in it run serially.
    static IN_TASK: Cell<bool> = const { Cell::new(false) };
}

impl Inner {
    fn threads(&self) -> usize {
        self.helpers.len() + 1
    }
}

impl Team {
    /// Starts `threads - 1` helpers (none for 0 or 1).
    pub fn new(threads: usize) -> std::io::Result<Team> {
        let shared = Arc::new(Shared {
            shares: (0..threads.max(1)).map(|_| Share::default()).collect(),
            state: AtomicU64::new(0),
            job: AtomicPtr::default(),
            asleep: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let mut handles = Vec::new();
        for i in 1..threads.max(1) {
            let s = shared.clone();
            let spawned = thread::Builder::new().name(format!("inferneo-kernel-{i}")).spawn(move || helper(&s));
            match spawned {
                Ok(h) => handles.push(h),
                Err(e) => {
                    stop(&shared, &handles);
                    return Err(e);
                }
            }
        }
        let helpers = handles.iter().map(|h| h.thread().clone()).collect();
        Ok(Team { inner: Arc::new(Inner { shared, helpers, busy: AtomicBool::new(false) }), handles })
    }

    /// Threads a loop uses: the caller and its helpers.
    pub fn threads(&self) -> usize {
        self.inner.threads()
    }

    /// Runs `f` with this team serving the parallel loops it starts on this thread.
    pub fn install<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(Option<Arc<Inner>>);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| *c.borrow_mut() = self.0.take());
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.borrow_mut().replace(self.inner.clone())));
        f()
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        stop(&self.inner.shared, &self.handles);
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

fn stop(shared: &Shared, handles: &[JoinHandle<()>]) {
    shared.stop.store(true, SeqCst);
    for h in handles {
        h.thread().unpark();
    }
}

/// Threads a parallel loop started here would use: the installed team's, 1 inside a task,
/// else rayon's.
pub fn threads() -> usize {
    if IN_TASK.get() {
        return 1;
    }
    CURRENT.with(|c| c.borrow().as_ref().map(|t| t.threads())).unwrap_or_else(rayon::current_num_threads)
}

/// Runs `f(i)` for every `i` in `0..n`, in parallel, returning when all have run. Panics in
/// `f` are re-raised here.
pub fn for_each(n: usize, f: impl Fn(usize) + Sync) {
    if n <= 1 || IN_TASK.get() {
        (0..n).for_each(f);
        return;
    }
    match CURRENT.with(|c| c.borrow().clone()) {
        Some(team) => run(&team, n, &f),
        None => (0..n).into_par_iter().for_each(&f),
    }
}

/// Runs `f(i, &mut items[i])` for every item, in parallel (see [`for_each`]).
pub fn for_each_mut<T: Send>(items: &mut [T], f: impl Fn(usize, &mut T) + Sync) {
    for_each_chunk_mut(items, 1, |i, one| f(i, &mut one[0]));
}

/// Runs `f(i, chunk)` for every `len`-long chunk of `data` (the last may be shorter), in
/// parallel (see [`for_each`]): `data.chunks_mut(len).enumerate()` without collecting the
/// chunks first.
pub fn for_each_chunk_mut<T: Send>(data: &mut [T], len: usize, f: impl Fn(usize, &mut [T]) + Sync) {
    /// The data's base pointer, shared by the tasks (each takes only its own chunk).
    struct Base<T>(*mut T);
    // SAFETY: `Base` only lets a task reach chunk `i`, which no other task touches (below), and
    // `T: Send` lets those items be used from another thread.
    unsafe impl<T: Send> Sync for Base<T> {}
    let (total, len) = (data.len(), len.max(1));
    let base = &Base(data.as_mut_ptr());
    for_each(total.div_ceil(len), |i| {
        let start = i * len;
        assert!(start < total);
        let Base(p) = base;
        // SAFETY: `for_each` runs each index exactly once, so no two tasks hold overlapping
        // chunks, the chunk (`start < total`, at most `total - start` long) lies in `data`, and
        // `data` stays mutably borrowed until every task has returned.
        let chunk = unsafe { std::slice::from_raw_parts_mut(p.add(start), len.min(total - start)) };
        f(i, chunk)
    });
}

/// Runs one loop on `team`: the caller takes tasks alongside every helper that joins.
fn run(team: &Inner, tasks: usize, f: &(dyn Fn(usize) + Sync)) {
    if team.busy.swap(true, Acquire) {
        (0..tasks).for_each(f);
        return;
    }
    let sh = &team.shared;
    let parts = sh.shares.len();
    // No helper is in a loop now (the last one waited for all to leave): the shares are ours.
    for (p, share) in sh.shares.iter().enumerate() {
        share.next.store(p * tasks / parts, Relaxed);
        share.end.store((p + 1) * tasks / parts, Relaxed);
    }
    let job = Job { f, shares: &sh.shares, stopped: AtomicBool::new(false), panic: Mutex::new(None) };
    // Helpers reach `job` only after joining its epoch while it is open, and this function
    // returns only after closing the epoch and seeing every joined helper leave: the pointer's
    // erased lifetime is never outlived.
    sh.job.store(std::ptr::from_ref(&job).cast_mut().cast(), Release);
    let epoch = ((sh.state.load(Relaxed) >> 32) + 1) & 0xFFFF_FFFF;
    // No helper is joined here (the last loop waited for all to leave), so the count is 0.
    sh.state.store(epoch << 32 | OPEN, SeqCst);
    if sh.asleep.load(SeqCst) > 0 {
        for t in &team.helpers {
            t.unpark();
        }
    }
    IN_TASK.set(true);
    job.work(0);
    sh.state.fetch_and(!OPEN, AcqRel);
    let mut spins = 0u32;
    while sh.state.load(Acquire) & JOINED != 0 {
        // A helper still in its last task; if it was preempted (more busy threads than cores),
        // let it have this core.
        spins = spins.saturating_add(1);
        if spins > 4096 {
            thread::yield_now();
        } else {
            std::hint::spin_loop();
        }
    }
    IN_TASK.set(false);
    team.busy.store(false, Release);
    if let Some(p) = job.panic.into_inner().unwrap_or_else(|e| e.into_inner()) {
        panic::resume_unwind(p);
    }
}

/// A helper: joins each loop it sees open, spins for [`SPIN`] after its last task, then parks
/// until a loop unparks it.
fn helper(sh: &Shared) {
    IN_TASK.set(true);
    let mut seen = sh.state.load(Acquire) >> 32;
    let mut idle_since = Instant::now();
    let mut spins = 0u32;
    while !sh.stop.load(Relaxed) {
        let s = sh.state.load(Acquire);
        if s >> 32 != seen {
            if s & OPEN == 0 {
                seen = s >> 32;
            } else if sh.state.compare_exchange_weak(s, s + 1, Acquire, Relaxed).is_ok() {
                seen = s >> 32;
                // SAFETY: joined while the epoch is open, so the caller in `run` keeps the job
                // alive until this helper leaves (the `fetch_sub` below).
                let job = unsafe { &*sh.job.load(Acquire) };
                // The n-th helper in starts at share n (only where to start: any order is correct).
                job.work(((s & JOINED) as usize + 1) % sh.shares.len());
                sh.state.fetch_sub(1, Release);
                idle_since = Instant::now();
            }
            continue;
        }
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let idle = idle_since.elapsed();
        if idle > SPIN {
            // Announce the sleep before the last look, and `run` publishes before it looks for
            // sleepers (both sequentially consistent): one of the two sees the other.
            sh.asleep.fetch_add(1, SeqCst);
            if sh.state.load(SeqCst) >> 32 == seen && !sh.stop.load(SeqCst) {
                thread::park();
            }
            sh.asleep.fetch_sub(1, SeqCst);
            idle_since = Instant::now();
        } else if idle > YIELD_AFTER {
            // Past the gaps inside a step: stay ready, but give the core to any thread that
            // wants it (another engine's, the server's).
            thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_on_the_team_and_loops_nest_serially() {
        let team = Team::new(4).unwrap();
        assert_eq!(team.threads(), 4);
        team.install(|| {
            assert_eq!(threads(), 4);
            for n in [0usize, 1, 2, 3, 7, 64, 1000] {
                let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                for_each(n, |i| {
                    // (A lone task runs as the caller, free to start a loop of its own.)
                    assert_eq!(threads(), if n > 1 { 1 } else { 4 }, "a nested loop runs serially");
                    for_each(3, |_| {
                        hits[i].fetch_add(1, Relaxed);
                    });
                });
                assert!(hits.iter().all(|h| h.load(Relaxed) == 3), "n = {n}");
            }
        });
        assert_eq!(threads(), rayon::current_num_threads(), "uninstalled: rayon's width");
    }

    #[test]
    fn items_are_each_mutated_once() {
        let team = Team::new(3).unwrap();
        let mut items: Vec<u64> = (0..500).collect();
        team.install(|| for_each_mut(&mut items, |i, v| *v = *v * 2 + i as u64));
        assert!(items.iter().enumerate().all(|(i, &v)| v == 3 * i as u64));
    }

    #[test]
    fn a_panicking_task_reaches_the_caller_and_the_team_goes_on() {
        let team = Team::new(2).unwrap();
        team.install(|| {
            let caught = panic::catch_unwind(|| for_each(16, |i| assert!(i != 5, "task 5 fails")));
            assert!(caught.is_err());
            let sum = AtomicUsize::new(0);
            for_each(100, |i| {
                sum.fetch_add(i, Relaxed);
            });
            assert_eq!(sum.load(Relaxed), 4950);
        });
    }

    #[test]
    fn parked_helpers_wake_for_the_next_loop() {
        let team = Team::new(3).unwrap();
        team.install(|| {
            for _ in 0..3 {
                thread::sleep(SPIN * 4);
                let ran: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
                for_each(64, |i| {
                    // Slow tasks, so a woken helper finds work left to take.
                    thread::sleep(Duration::from_micros(200));
                    ran[i].fetch_add(1, Relaxed);
                });
                assert!(ran.iter().all(|r| r.load(Relaxed) == 1));
            }
        });
    }

    #[test]
    fn many_short_loops_back_to_back() {
        let team = Team::new(4).unwrap();
        let total = AtomicUsize::new(0);
        team.install(|| {
            for _ in 0..20_000 {
                for_each(8, |_| {
                    total.fetch_add(1, Relaxed);
                });
            }
        });
        assert_eq!(total.load(Relaxed), 160_000);
    }

    #[test]
    fn a_second_caller_runs_its_loop_alone() {
        let team = Team::new(2).unwrap();
        let total = AtomicUsize::new(0);
        thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    team.install(|| {
                        for _ in 0..2000 {
                            for_each(4, |_| {
                                total.fetch_add(1, Relaxed);
                            });
                        }
                    })
                });
            }
        });
        assert_eq!(total.load(Relaxed), 16_000);
    }
}

//! A team of threads for the many short parallel regions of decoding: the calling thread and
//! `n - 1` helpers that wait for work by spinning (for a while, then asleep), so that a product
//! of a few hundred microseconds is not held up by waking threads through the OS.
//!
//! Decoding runs several hundred parallel products and attention passes per token, each a few
//! tens to hundreds of microseconds. On rayon's pool, helpers that have gone to sleep between
//! them are woken through a futex and a context switch: at 2 threads a 2048 × 2048 Q4_0 product
//! streamed at 20–26 GB/s there against 30.8 GB/s on a spinning helper (`examples/par_probe.rs`,
//! read probe 34–35 GB/s).
//!
//! [`Team::enter`] makes a team current on the calling thread; [`crate::par_matmul`] and
//! [`for_each_chunk`] use the current team, and rayon's current pool where there is none.

use std::cell::{Cell, UnsafeCell};
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The body of a parallel region: called once per member, with its index `0..n`.
type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// How long a helper spins for the next region before it sleeps: between the products of a
/// token the gap is microseconds; between tokens, sampling and the caller's callback.
const SPIN: Duration = Duration::from_millis(2);

struct Shared {
    n: usize,
    /// Bumped once per region; helpers run the job when it changes.
    epoch: AtomicU64,
    /// The current region's job: a `*const &Job` on the caller's stack, valid while
    /// `pending > 0`.
    job: UnsafeCell<*const ()>,
    /// Helpers that have not finished the current region.
    pending: AtomicUsize,
    /// A helper's job panicked (re-raised on the caller).
    panicked: AtomicBool,
    stop: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is written only by the thread running `Team::run` (which `run_lock` makes one at
// a time) before it publishes the region by bumping `epoch` (release), and read by helpers only
// after they see the new epoch (acquire) and before they decrement `pending`, which the writer
// waits for before writing again or returning.
unsafe impl Sync for Shared {}
// SAFETY: as above; the pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// The calling thread and `n - 1` helper threads (see the module documentation).
pub struct Team {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
    /// One region at a time (a team shared by two callers would mix their jobs).
    run_lock: Mutex<()>,
}

impl std::fmt::Debug for Team {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Team").field("n", &self.shared.n).finish()
    }
}

thread_local! {
    /// The team entered on this thread (null: none, or inside one of its regions).
    static CURRENT: Cell<*const Team> = const { Cell::new(std::ptr::null()) };
}

impl Team {
    /// A team of `n ≥ 1` members: this thread and `n - 1` helpers named `{name}-{i}`.
    pub fn new(n: usize, name: &str) -> std::io::Result<Team> {
        let n = n.max(1);
        let shared = Arc::new(Shared {
            n,
            epoch: AtomicU64::new(0),
            job: UnsafeCell::new(std::ptr::null()),
            pending: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut team = Team {
            shared: shared.clone(),
            helpers: Vec::with_capacity(n - 1),
            run_lock: Mutex::new(()),
        };
        for i in 1..n {
            let sh = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || helper(&sh, i))?;
            team.helpers.push(h);
        }
        Ok(team)
    }

    /// Members, the calling thread included.
    pub fn size(&self) -> usize {
        self.shared.n
    }

    /// Runs `f` with this team current on the calling thread.
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        struct Restore(*const Team);
        impl Drop for Restore {
            fn drop(&mut self) {
                CURRENT.with(|c| c.set(self.0));
            }
        }
        let _restore = Restore(CURRENT.with(|c| c.replace(self)));
        f()
    }

    /// Calls `f(i)` for every member `i` (0 on the calling thread) and returns when all have
    /// returned; a panic in any is raised here once all have finished.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let sh = &*self.shared;
        if sh.n == 1 {
            return f(0);
        }
        let _one = self.run_lock.lock().unwrap_or_else(|e| e.into_inner());
        let job: &Job<'_> = f;
        // SAFETY: see `Shared`: no helper reads `job` until the epoch below changes, and the
        // previous region's helpers have all finished (`pending` was 0 when it returned).
        unsafe { *sh.job.get() = &job as *const &Job<'_> as *const () };
        sh.pending.store(sh.n - 1, Ordering::Relaxed);
        sh.epoch.fetch_add(1, Ordering::SeqCst);
        if sh.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        // The caller's share, with no team current (a nested region runs serially).
        let mine = {
            let prev = CURRENT.with(|c| c.replace(std::ptr::null()));
            let r = catch_unwind(AssertUnwindSafe(|| f(0)));
            CURRENT.with(|c| c.set(prev));
            r
        };
        let mut spins = 0u32;
        while sh.pending.load(Ordering::Acquire) != 0 {
            spins += 1;
            if spins < 1 << 16 {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        let theirs = sh.panicked.swap(false, Ordering::Relaxed);
        if let Err(p) = mine {
            resume_unwind(p);
        }
        assert!(!theirs, "a team member's task panicked");
    }
}

impl Drop for Team {
    fn drop(&mut self) {
        let sh = &*self.shared;
        sh.stop.store(true, Ordering::SeqCst);
        {
            let _g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A helper's life: wait for a new region (spinning up to [`SPIN`], then asleep), run its
/// share, report, until the team is dropped.
fn helper(sh: &Shared, i: usize) {
    let mut seen = 0u64;
    loop {
        let mut since = None;
        let mut spins = 0u32;
        loop {
            let e = sh.epoch.load(Ordering::Acquire);
            if sh.stop.load(Ordering::Acquire) {
                return;
            }
            if e != seen {
                seen = e;
                break;
            }
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(1024) {
                std::hint::spin_loop();
                continue;
            }
            let t0 = *since.get_or_insert_with(Instant::now);
            if t0.elapsed() < SPIN {
                continue;
            }
            let g = sh.lock.lock().unwrap_or_else(|e| e.into_inner());
            sh.sleepers.fetch_add(1, Ordering::SeqCst);
            let g = sh
                .wake
                .wait_while(g, |_| {
                    sh.epoch.load(Ordering::SeqCst) == seen && !sh.stop.load(Ordering::SeqCst)
                })
                .unwrap_or_else(|e| e.into_inner());
            sh.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(g);
            since = None;
        }
        // SAFETY: the epoch changed (acquire), so `job` points at the caller's `&Job`, which
        // lives until `pending` reaches 0, after this helper's decrement below.
        let job = unsafe { &**(*sh.job.get() as *const &Job<'_>) };
        if catch_unwind(AssertUnwindSafe(|| job(i))).is_err() {
            sh.panicked.store(true, Ordering::Relaxed);
        }
        sh.pending.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The team current on this thread, if any.
pub(crate) fn with_current<R>(f: impl FnOnce(Option<&Team>) -> R) -> R {
    let p = CURRENT.with(|c| c.get());
    // SAFETY: `CURRENT` is set only by `Team::enter` for the duration of its closure, during
    // which the team is borrowed and so alive.
    f(unsafe { p.as_ref() })
}

/// Threads the parallel helpers here use: the current team's members, else rayon's current
/// pool's threads.
pub fn current_threads() -> usize {
    with_current(|t| t.map(Team::size)).unwrap_or_else(rayon::current_num_threads)
}

/// Calls `task(member_scratch, i)` for every `i` in `0..tasks`, dealt out dynamically to the
/// current team's members (else across rayon's current pool). `scratch` is the calling thread's
/// scratch; helpers use their own, kept between calls.
pub(crate) fn for_each_task(
    tasks: usize,
    scratch: &mut Vec<f32>,
    task: &(dyn Fn(&mut Vec<f32>, usize) + Sync),
) {
    thread_local! {
        static SCRATCH: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    }
    with_current(|team| match team {
        Some(team) if team.size() > 1 && tasks > 1 => {
            let next = AtomicUsize::new(0);
            let caller = std::sync::Mutex::new(std::mem::take(scratch));
            team.run(&|m| {
                let mut own;
                let mut guard;
                let s: &mut Vec<f32> = if m == 0 {
                    guard = caller.lock().unwrap_or_else(|e| e.into_inner());
                    &mut guard
                } else {
                    own = SCRATCH.take();
                    &mut own
                };
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= tasks {
                        break;
                    }
                    task(s, i);
                }
                if m != 0 {
                    SCRATCH.set(std::mem::take(s));
                }
            });
            *scratch = caller.into_inner().unwrap_or_else(|e| e.into_inner());
        }
        _ => {
            use rayon::prelude::*;
            if rayon::current_num_threads() > 1 && tasks > 1 {
                (0..tasks)
                    .into_par_iter()
                    .for_each_init(Vec::new, |s, i| task(s, i));
            } else {
                for i in 0..tasks {
                    task(scratch, i);
                }
            }
        }
    })
}

/// A task of [`for_each_chunk`]: member scratch, piece index, piece.
pub type ChunkTask<'a> = dyn Fn(&mut Vec<f32>, usize, &mut [f32]) + Sync + 'a;

/// Calls `task(member_scratch, i, piece)` for every `chunk`-sized piece `i` of `out` (the last
/// may be shorter), dealt out as [`for_each_task`] deals its tasks.
pub fn for_each_chunk(out: &mut [f32], chunk: usize, scratch: &mut Vec<f32>, task: &ChunkTask<'_>) {
    /// `out`, whose pieces the tasks write one each.
    struct Pieces(*mut f32, usize);
    // SAFETY: task `i` alone touches piece `i` (see below).
    unsafe impl Sync for Pieces {}
    let pieces = Pieces(out.as_mut_ptr(), out.len());
    let chunk = chunk.max(1);
    for_each_task(out.len().div_ceil(chunk), scratch, &|s, i| {
        let p = &pieces;
        let (a, b) = (i * chunk, ((i + 1) * chunk).min(p.1));
        // SAFETY: the pieces `a..b` of distinct tasks are disjoint and inside `out`, which is
        // borrowed mutably for the whole call.
        let piece = unsafe { std::slice::from_raw_parts_mut(p.0.add(a), b - a) };
        task(s, i, piece);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_member_runs_once_per_region_and_panics_come_back() {
        let team = Team::new(3, "t").unwrap();
        for _ in 0..1000 {
            let hits: Vec<AtomicUsize> = (0..3).map(|_| AtomicUsize::new(0)).collect();
            team.run(&|i| {
                hits[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
        }
        // After the helpers have gone to sleep, a region still wakes them.
        std::thread::sleep(SPIN * 3);
        let sum = AtomicUsize::new(0);
        team.run(&|i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 3);
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.run(&|i| assert!(i != 2, "member 2"))
        }));
        assert!(r.is_err(), "a helper's panic reaches the caller");
        let ok = AtomicUsize::new(0);
        team.run(&|_| {
            ok.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(
            ok.load(Ordering::Relaxed),
            3,
            "the team works after a panic"
        );
    }

    #[test]
    fn tasks_are_dealt_out_exactly_once() {
        let team = Team::new(2, "t").unwrap();
        team.enter(|| {
            assert_eq!(current_threads(), 2);
            let counts: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            let mut scratch = vec![1.0];
            for_each_task(37, &mut scratch, &|s, i| {
                s.push(0.0);
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(counts.iter().all(|c| c.load(Ordering::Relaxed) == 1));
            assert_eq!(scratch[0], 1.0, "the caller's scratch comes back");
        });
    }
}

//! Running a job on libtorch's own OpenMP threads.
//!
//! libtorch's CPU operations run on an OpenMP team whose idle threads keep polling for
//! a while after each parallel region (libgomp's default wait policy). A second set of
//! worker threads (a `rayon` pool, or our own) then fights them for the cores: on the
//! 2-core development machine, decoding with such a pool ran at half the speed of
//! plain libtorch, and at 2-3 times its speed once `OMP_WAIT_POLICY=passive` silenced
//! the OpenMP threads. So the kernels borrow the OpenMP team itself, through
//! `GOMP_parallel`, the entry point `#pragma omp parallel` compiles to (exported by
//! libgomp and, for compatibility, by LLVM's and Intel's OpenMP runtimes). It also
//! starts jobs faster than `rayon` does (about 15 µs per job there).

use std::ffi::{c_uint, c_void};
use std::sync::OnceLock;

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

/// `GOMP_parallel` from the OpenMP runtime libtorch loaded, if the process has one.
fn gomp_parallel() -> Option<GompParallel> {
    static ENTRY: OnceLock<Option<GompParallel>> = OnceLock::new();
    *ENTRY.get_or_init(|| {
        #[cfg(unix)]
        {
            // The process's global scope: libtorch's libraries and their dependencies.
            let this = libloading::os::unix::Library::this();
            // SAFETY: the symbol has had this signature since GCC 4.9 (`GOMP_4.0`).
            let entry = unsafe { this.get::<GompParallel>(b"GOMP_parallel\0") }.ok()?;
            let entry = *entry;
            // The runtime stays loaded for the process's life (libtorch needs it).
            std::mem::forget(this);
            Some(entry)
        }
        #[cfg(not(unix))]
        None
    })
}

/// Whether [`broadcast`] can run jobs here.
pub(crate) fn available() -> bool {
    gomp_parallel().is_some()
}

extern "C" fn trampoline(data: *mut c_void) {
    // SAFETY: `data` is the `&&dyn Fn` that `broadcast` passed, alive until it returns.
    // A panic here aborts the process (it cannot unwind through C); the kernels run
    // here do not panic.
    let job = unsafe { &*data.cast::<&(dyn Fn() + Sync)>() };
    job();
}

/// Runs `job` once on each of `threads` OpenMP threads (the caller is one of them) and
/// returns when all are done; `job` shares out the work itself. `false` when there is
/// no OpenMP runtime (nothing ran).
pub(crate) fn broadcast(threads: usize, job: &(dyn Fn() + Sync)) -> bool {
    let Some(parallel) = gomp_parallel() else {
        return false;
    };
    let mut job = job;
    let data = (&raw mut job).cast::<c_void>();
    let threads = c_uint::try_from(threads).unwrap_or(c_uint::MAX);
    // SAFETY: `trampoline` reads `data` as what it is; GOMP_parallel returns only after
    // every thread of the team has finished, so `job` outlives its uses.
    unsafe { parallel(trampoline, data, threads, 0) };
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_thread_runs_the_job_once_and_work_is_shared_exactly_once() {
        // Any libtorch call makes sure its OpenMP runtime is loaded and initialised.
        let _ = tch::get_num_threads();
        assert!(
            available(),
            "libtorch's OpenMP runtime exports GOMP_parallel"
        );
        for round in 0..100 {
            let next = AtomicUsize::new(0);
            let done: Vec<AtomicUsize> = (0..97).map(|_| AtomicUsize::new(0)).collect();
            let runs = AtomicUsize::new(0);
            assert!(broadcast(2, &|| {
                runs.fetch_add(1, Ordering::Relaxed);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= done.len() {
                        break;
                    }
                    done[i].fetch_add(1, Ordering::Relaxed);
                }
            }));
            assert_eq!(runs.load(Ordering::Relaxed), 2, "round {round}");
            assert!(done.iter().all(|d| d.load(Ordering::Relaxed) == 1));
        }
    }
}

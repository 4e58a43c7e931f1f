//! `--threads`, shared by every command.

/// `--threads`: libtorch's intra-op pool, and once per process its inter-op pool and rayon's
/// global pool (libtorch refuses a second inter-op setting, rayon a second global pool).
pub fn set(threads: Option<i32>) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    if let Some(t) = threads {
        let t = t.max(1);
        tch::set_num_threads(t);
        ONCE.call_once(|| {
            tch::set_num_interop_threads(t);
            let _ = rayon::ThreadPoolBuilder::new()
                .num_threads(t as usize)
                .build_global();
        });
    }
}

/// Makes libtorch ops issued from this (worker) thread run on this thread alone, for good.
/// OpenMP's thread count is per thread, but ATen also keeps a process-wide count that a thread
/// copies on its first parallel op: the first call settles that copy, then sets 1. Whoever fans
/// out to such workers restores the process-wide count afterwards (`with_single_thread_workers`).
pub fn single_in_this_thread() {
    thread_local!(static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) });
    DONE.with(|d| {
        if !d.get() {
            d.set(true);
            let _ = tch::get_num_threads();
            tch::set_num_threads(1);
        }
    });
}

/// Runs `f` (which fans work out to workers calling `single_in_this_thread`) and leaves the
/// caller's libtorch thread count, and the process-wide one, as they were.
pub fn with_single_thread_workers<T>(f: impl FnOnce() -> T) -> T {
    let mine = tch::get_num_threads();
    let out = f();
    tch::set_num_threads(mine);
    out
}

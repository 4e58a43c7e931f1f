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

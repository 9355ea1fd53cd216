//! Thread priorities, so a publish is never queued behind fan-out writes.
//!
//! Under heavy fan-out the stream workers keep both cores busy, and the thread that serves
//! `POST /publish` waits its turn to run: measured with 10,000 subscribers and 1,000 POSTs/s,
//! the wait was most of a POST's p99 (docs/benchmarks.md, "Publish latency under fan-out").
//! Linux gives each thread its own nice value, so the publish thread can run ahead of the
//! workers: raising it (a negative nice) needs `CAP_SYS_NICE` or a raised `RLIMIT_NICE`, and
//! harms nobody since that thread does little; lowering the workers (a positive nice) needs no
//! privilege, but on a shared machine it also yields them to every other process.

use std::io;

/// Sets the calling thread's nice value (-20 to 19; lower runs first).
///
/// On Linux `setpriority(PRIO_PROCESS, tid)` applies to that one thread (see the BUGS section
/// of `setpriority(2)`), which is what this relies on; elsewhere it would change the whole
/// process, so it is refused.
#[cfg(target_os = "linux")]
pub(crate) fn set_current_thread_nice(nice: i32) -> io::Result<()> {
    let me = rustix::thread::gettid();
    rustix::process::setpriority_process(Some(me), nice).map_err(io::Error::from)
}

/// Sets the calling thread's nice value: not supported off Linux.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_current_thread_nice(_nice: i32) -> io::Result<()> {
    Err(io::Error::new(io::ErrorKind::Unsupported, "per-thread priorities need Linux"))
}

/// The calling thread's nice value.
#[cfg(all(test, target_os = "linux"))]
fn current_thread_nice() -> io::Result<i32> {
    let me = rustix::thread::gettid();
    rustix::process::getpriority_process(Some(me)).map_err(io::Error::from)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn a_threads_nice_value_is_its_own() {
        let before = current_thread_nice().expect("getpriority");
        let other = std::thread::spawn(|| {
            set_current_thread_nice(15).expect("raising nice needs no privilege");
            current_thread_nice().expect("getpriority")
        })
        .join()
        .expect("thread");
        assert_eq!(other, 15);
        assert_eq!(current_thread_nice().expect("getpriority"), before, "only that thread");
    }
}

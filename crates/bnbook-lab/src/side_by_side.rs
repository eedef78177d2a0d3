//! Independent training runs side by side, one thread each.
//!
//! A training step splits its work over threads operation by operation,
//! and many of a LeNet step's operations are too small to split well: on
//! two cores a batch-256 step runs about 1.7 times faster than on one, and
//! a batch of 2 to 16 no faster at all. An experiment that trains many
//! networks (seeds, normalisations, batch sizes) gets more done by giving
//! each run one thread and running as many runs at once as there are
//! threads. Training results do not depend on the number of threads (the
//! crate splits sums into fixed pieces), so every run gives exactly the
//! numbers it gives alone; only its speed differs.

use bnbook::{Error, Result};
use std::sync::Mutex;

/// Runs `run(job)` for every job, `rayon::current_num_threads()` jobs at a
/// time, each on a rayon pool of its own with one thread, and returns the
/// results in the order of `jobs`. Jobs are handed out in order as
/// workers become free. After a failure no new job starts, and the first
/// error (in job order) is returned.
///
/// # Errors
/// The first error of a job, or [`Error::InvalidArgument`] if a
/// one-thread pool cannot be built.
pub fn side_by_side<J, T>(jobs: Vec<J>, run: impl Fn(J) -> Result<T> + Sync) -> Result<Vec<T>>
where
    J: Send,
    T: Send,
{
    let workers = rayon::current_num_threads().clamp(1, jobs.len().max(1));
    let queue = Mutex::new(jobs.into_iter().enumerate());
    let results: Mutex<Vec<(usize, Result<T>)>> = Mutex::new(Vec::new());
    let failed = std::sync::atomic::AtomicBool::new(false);
    let work = || -> Result<()> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .map_err(|e| Error::InvalidArgument(format!("cannot start a worker thread: {e}")))?;
        loop {
            if failed.load(std::sync::atomic::Ordering::Relaxed) {
                return Ok(());
            }
            let next = queue.lock().expect("no worker panicked").next();
            let Some((index, job)) = next else {
                return Ok(());
            };
            let result = pool.install(|| run(job));
            if result.is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            results
                .lock()
                .expect("no worker panicked")
                .push((index, result));
        }
    };
    std::thread::scope(|scope| -> Result<()> {
        let handles: Vec<_> = (0..workers).map(|_| scope.spawn(work)).collect();
        for handle in handles {
            handle
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))?;
        }
        Ok(())
    })?;
    let mut results = results.into_inner().expect("no worker panicked");
    results.sort_by_key(|(index, _)| *index);
    results.into_iter().map(|(_, result)| result).collect()
}

/// How [`side_by_side`] arranges its runs on this pool, for the notes
/// under the tables: `2 runs side by side`, or `the runs one after the
/// other` on one thread.
pub fn arrangement() -> String {
    match rayon::current_num_threads() {
        1 => "the runs one after the other".to_string(),
        t => format!("{t} runs side by side"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_come_back_in_job_order_and_errors_stop_the_rest() {
        let squares = side_by_side((0..20).collect(), |i: u64| Ok(i * i)).unwrap();
        assert_eq!(squares, (0..20).map(|i| i * i).collect::<Vec<u64>>());
        let failed = side_by_side((0..20).collect(), |i: u64| {
            if i == 3 {
                Err(Error::InvalidArgument("job 3".into()))
            } else {
                Ok(i)
            }
        });
        assert!(failed.unwrap_err().to_string().contains("job 3"));
        assert!(side_by_side(Vec::<u64>::new(), Ok).unwrap().is_empty());
    }
}

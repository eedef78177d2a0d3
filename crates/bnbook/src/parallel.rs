//! Where the kernels' parallel loops come from.
//!
//! With the default feature `parallel` this is rayon's prelude: the loops of
//! `autograd::{kernels, conv, gemm}`, `concise` and `norms` split their work
//! items over rayon's thread pool. Without it (the WebAssembly build of the
//! browser lab, book chapter "Try it: batch norm in your browser") the same
//! method names hand back the standard sequential iterators, so every loop
//! runs on the calling thread over the same work items in the same order.
//! Each work item computes the same values either way, and every reduction
//! over work items is collected and then summed in item order, so the numbers
//! do not depend on the feature.

#[cfg(feature = "parallel")]
pub(crate) use rayon::prelude::*;

#[cfg(not(feature = "parallel"))]
pub(crate) use sequential::*;

/// The one-thread stand-ins for the rayon methods the kernels call.
#[cfg(not(feature = "parallel"))]
mod sequential {
    /// `par_chunks` on a shared slice: `chunks`.
    pub(crate) trait ParallelSlice<T> {
        /// The slice in chunks of `size`, on the calling thread.
        fn par_chunks(&self, size: usize) -> std::slice::Chunks<'_, T>;
    }

    impl<T> ParallelSlice<T> for [T] {
        fn par_chunks(&self, size: usize) -> std::slice::Chunks<'_, T> {
            self.chunks(size)
        }
    }

    /// `par_chunks_mut` on a mutable slice: `chunks_mut`.
    pub(crate) trait ParallelSliceMut<T> {
        /// The slice in mutable chunks of `size`, on the calling thread.
        fn par_chunks_mut(&mut self, size: usize) -> std::slice::ChunksMut<'_, T>;
    }

    impl<T> ParallelSliceMut<T> for [T] {
        fn par_chunks_mut(&mut self, size: usize) -> std::slice::ChunksMut<'_, T> {
            self.chunks_mut(size)
        }
    }

    /// `into_par_iter` on anything iterable: `into_iter`.
    pub(crate) trait IntoParallelIterator: IntoIterator + Sized {
        /// The items, on the calling thread.
        fn into_par_iter(self) -> Self::IntoIter {
            self.into_iter()
        }
    }

    impl<I: IntoIterator> IntoParallelIterator for I {}
}

/// Runs `f` on the calling thread while the other threads of rayon's pool
/// keep looking for work instead of going to sleep; returns what `f` returns.
///
/// A training step is a chain of short parallel loops with short
/// single-threaded stretches between them (small layers, the loss, the SGD
/// update). A pool thread that finds no work for a few tens of microseconds
/// goes to sleep, and waking it for the next loop costs about 20 µs on these
/// virtual machines — a few percent of a step at two threads, paid about
/// twenty times per step. Here each other thread runs a job that asks the
/// pool for work ([`rayon::yield_now`]) until `f` is done, so it picks up the
/// next loop's pieces at once. It uses the processor while waiting, which
/// is what a training run wants of the threads it was given.
///
/// Which thread runs a work item never changes the numbers (the work items
/// and the order of their sums are fixed), so `f` computes the same bits
/// with or without this. Outside a pool thread, in a pool of one thread,
/// or without the feature `parallel`, it simply calls `f`.
pub fn keep_pool_awake<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(feature = "parallel")]
    {
        use std::sync::atomic::{AtomicBool, Ordering};
        let Some(caller) = rayon::current_thread_index() else {
            return f();
        };
        if rayon::current_num_threads() < 2 {
            return f();
        }
        /// Sets the flag when dropped: the polling jobs stop even if `f` panics.
        struct SetOnDrop<'a>(&'a AtomicBool);
        impl Drop for SetOnDrop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Release);
            }
        }
        let done = AtomicBool::new(false);
        rayon::in_place_scope(|scope| {
            // one job per pool thread; the caller's own copy returns at once
            // (it must not poll: it would never get back to running `f`)
            scope.spawn_broadcast(|_, thread| {
                if thread.index() == caller {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::hint::spin_loop();
                    }
                }
            });
            let _stop = SetOnDrop(&done);
            f()
        })
    }
    #[cfg(not(feature = "parallel"))]
    f()
}

#[cfg(all(test, feature = "parallel"))]
mod tests {
    use super::keep_pool_awake;
    use rayon::prelude::*;

    fn two_threads() -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("a pool of two threads")
    }

    /// A parallel sum in fixed pieces, as the kernels take theirs.
    fn piecewise_sum(v: &[f32]) -> f32 {
        let parts: Vec<f32> = v.par_chunks(1000).map(|c| c.iter().sum()).collect();
        parts.iter().sum()
    }

    #[test]
    fn returns_what_f_returns_with_the_same_bits() {
        let v: Vec<f32> = (0..100_000).map(|i| (i as f32).sin()).collect();
        let pool = two_threads();
        let plain = pool.install(|| piecewise_sum(&v));
        let awake = pool.install(|| keep_pool_awake(|| piecewise_sum(&v)));
        assert_eq!(plain.to_bits(), awake.to_bits());
        // many parallel loops in a row, as in a training step
        let repeated = pool.install(|| {
            keep_pool_awake(|| (0..200).map(|_| piecewise_sum(&v)).collect::<Vec<_>>())
        });
        assert!(repeated.iter().all(|s| s.to_bits() == plain.to_bits()));
        // outside any pool thread, and in a pool of one thread: just `f`
        assert_eq!(keep_pool_awake(|| 7), 7);
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        assert_eq!(
            one.install(|| keep_pool_awake(|| piecewise_sum(&v)))
                .to_bits(),
            plain.to_bits()
        );
    }

    #[test]
    fn a_panic_in_f_reaches_the_caller_instead_of_hanging() {
        let pool = two_threads();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pool.install(|| keep_pool_awake(|| -> usize { panic!("boom") }))
        }));
        assert!(caught.is_err());
        // the pool is usable afterwards: its other thread stopped polling
        assert_eq!(pool.install(|| keep_pool_awake(|| 3)), 3);
    }
}

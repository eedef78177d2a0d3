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

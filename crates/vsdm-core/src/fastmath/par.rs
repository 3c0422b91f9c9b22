//! Row drivers on candle's worker pool that write outputs they never zero-fill.

use std::mem::MaybeUninit;

/// A raw pointer that may cross threads: [`par_rows_mut`] hands each task a disjoint part of the memory, and
/// kernels that write disjoint strided parts of one buffer from their tasks (the time-series attention's heads,
/// each a column block of shared rows) share their output through it.
pub struct Shared<T>(pub *mut T);

// SAFETY: `Shared` only carries the base pointer of a `&mut [T]` whose disjoint parts go to different tasks
// (see `par_rows_mut`), which is sound whenever `T` itself may be sent to another thread.
unsafe impl<T: Send> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The part of `len` elements at `start` (a method, so that closures capture the whole wrapper).
    ///
    /// # Safety
    /// `start + len` lies within the slice the pointer came from, and no other live reference overlaps it.
    #[allow(clippy::mut_from_ref)]
    pub(super) unsafe fn part(&self, start: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(start), len)
    }

    /// The element `off` values in (a method, so that closures capture the whole wrapper).
    ///
    /// # Safety
    /// `off` lies within the buffer the pointer came from.
    pub unsafe fn at(&self, off: usize) -> *mut T {
        self.0.add(off)
    }
}

/// Runs `f(first_row, a_rows, b_rows)` over `rows` rows in parallel, each call on a contiguous run of rows: `a`
/// holds rows of `wa` elements and `b` rows of `wb` (`wb` = 0: none), and each call gets exactly its rows of
/// both, to write. The tasks run on candle's own CPU worker pool (`candle_core::utils::barrier_pool`, the one
/// its element-wise ops run on), not on rayon's: candle's workers spin for a while after each of its ops, so a
/// kernel sent to another pool in between competes with them for the cores (measured on the U-Net's group
/// norm, docs/benchmarks/image.md). Runs of about an eighth of a thread's share.
///
/// # Panics
/// When `a` or `b` is shorter than its rows.
pub fn par_rows_mut<A: Send, B: Send>(
    (a, wa): (&mut [A], usize),
    (b, wb): (&mut [B], usize),
    rows: usize,
    f: impl Fn(usize, &mut [A], &mut [B]) + Sync,
) {
    assert!(
        a.len() >= rows * wa && b.len() >= rows * wb,
        "par_rows_mut: {rows} rows of {wa} and {wb} in slices of {} and {}",
        a.len(),
        b.len()
    );
    let (pa, pb) = (Shared(a.as_mut_ptr()), Shared(b.as_mut_ptr()));
    candle_core::utils::barrier_pool().execute_chunked(rows, |r| {
        // SAFETY: `execute_chunked` hands out disjoint ranges of 0..rows, so the parts do not overlap; they lie
        // within `a` and `b` (asserted above), which stay mutably borrowed for the whole call.
        let (ra, rb) = unsafe {
            (
                pa.part(r.start * wa, r.len() * wa),
                pb.part(r.start * wb, r.len() * wb),
            )
        };
        f(r.start, ra, rb)
    });
}

/// Runs `f(first_row, rows_of_a)` over `rows` rows of `w` elements of `a`, one contiguous run per thread of
/// candle's worker pool (where [`par_rows_mut`] makes about eight runs per thread): for kernels with a fixed
/// cost per call, such as a matrix product that packs its right-hand side again in every call.
pub fn par_runs_mut<A: Send>(
    (a, w): (&mut [A], usize),
    rows: usize,
    f: impl Fn(usize, &mut [A]) + Sync,
) {
    assert!(
        a.len() >= rows * w,
        "par_runs_mut: {rows} rows of {w} in a slice of {}",
        a.len()
    );
    if rows == 0 {
        return;
    }
    let pool = candle_core::utils::barrier_pool();
    let runs = (pool.n_workers() + 1).min(rows);
    let per = rows.div_ceil(runs);
    let pa = Shared(a.as_mut_ptr());
    // One item per run (the pool hands out single items when there are this few, and runs nested calls inline).
    pool.execute_chunked(runs, |items| {
        for run in items {
            let r0 = run * per;
            if r0 >= rows {
                continue;
            }
            let n = per.min(rows - r0);
            // SAFETY: run `run` covers rows [run·per, run·per + n), disjoint between runs and within `a`
            // (asserted above), which stays mutably borrowed for the whole call.
            f(r0, unsafe { pa.part(r0 * w, n * w) })
        }
    });
}

/// A vector of `rows` rows of `w` values, written in parallel by `fill(first_row, run)` on runs of whole rows
/// ([`par_rows_mut`]) and never zero-filled.
///
/// # Safety
/// `fill` writes every element of each run it is given (the vector is read as initialised afterwards).
pub unsafe fn par_fill<T: Send>(
    rows: usize,
    w: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    let len = rows * w;
    let mut out: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    par_rows_mut(
        (&mut out.spare_capacity_mut()[..len], w),
        (&mut [] as &mut [u8], 0),
        rows,
        |r0, run, _| fill(r0, run),
    );
    // SAFETY: the runs cover all `rows` rows of `w` elements and `fill` writes each one (the caller's contract).
    out.set_len(len);
    out
}

/// Runs `kernel(a_rows, b_rows, out_rows)` over `rows` rows in parallel ([`par_fill`]) and returns the
/// output: `a` has rows of `wa`, `b` rows of `wb` (or is empty, `wb` = 0), the output rows of `wo`; the kernel
/// must write every element of its output rows (the output is never zero-filled).
pub fn par_rows<T: Copy + Send + Sync>(
    (a, wa): (&[T], usize),
    (b, wb): (&[T], usize),
    wo: usize,
    rows: usize,
    kernel: impl Fn(&[T], &[T], &mut [MaybeUninit<T>]) + Sync,
) -> Vec<T> {
    // SAFETY: every kernel writes each element of its output rows (this function's documented contract).
    unsafe {
        par_fill(rows, wo, |r0, o| {
            let n = o.len() / wo;
            let b = if wb == 0 {
                &[][..]
            } else {
                &b[r0 * wb..(r0 + n) * wb]
            };
            kernel(&a[r0 * wa..(r0 + n) * wa], b, o)
        })
    }
}

//! Where does backward time go? An opt-in timer per operation.
//!
//! ```
//! bnbook::autograd::profile::enable(true);
//! // ... run some backward passes ...
//! for (op, calls, seconds) in bnbook::autograd::profile::take() {
//!     println!("{op:>24} {calls:6} calls {:8.2} ms", seconds * 1e3);
//! }
//! ```

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::time::Instant;

thread_local! {
    static ENABLED: Cell<bool> = const { Cell::new(false) };
    static TOTALS: RefCell<BTreeMap<&'static str, (u64, f64)>> = const { RefCell::new(BTreeMap::new()) };
}

/// Turns timing of backward rules on or off (off by default; it costs
/// one clock read per operation when on).
pub fn enable(on: bool) {
    ENABLED.with(|e| e.set(on));
}

pub(super) fn start() -> Option<Instant> {
    ENABLED.with(|e| e.get()).then(Instant::now)
}

pub(super) fn record(op: &'static str, started: Option<Instant>) {
    if let Some(t) = started {
        let dt = t.elapsed().as_secs_f64();
        TOTALS.with(|m| {
            let mut m = m.borrow_mut();
            let e = m.entry(op).or_insert((0, 0.0));
            e.0 += 1;
            e.1 += dt;
        });
    }
}

/// The accumulated `(operation, calls, seconds)` of backward rules since
/// the last call, slowest first; resets the totals.
pub fn take() -> Vec<(&'static str, u64, f64)> {
    let mut v: Vec<_> = TOTALS
        .with(|m| std::mem::take(&mut *m.borrow_mut()))
        .into_iter()
        .map(|(op, (n, s))| (op, n, s))
        .collect();
    v.sort_by(|a, b| b.2.total_cmp(&a.2));
    v
}

//! The wall clock as tests need it: the HTTP cache compares tag invalidations with the start
//! of origin calls at millisecond resolution, so a test that expects a response to be stored
//! right after an invalidation must start it in a later millisecond.

use std::time::{SystemTime, UNIX_EPOCH};

fn millis() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis())
        .unwrap_or_default()
}

/// Returns once the wall clock's millisecond has changed (at most about a millisecond, so
/// spinning is cheaper than any timer).
///
/// ```
/// let before = std::time::SystemTime::now();
/// cachelayer_testkit::wait_for_next_millisecond();
/// assert!(before.elapsed().expect("clock") > std::time::Duration::ZERO);
/// ```
pub fn wait_for_next_millisecond() {
    let now = millis();
    while millis() == now {
        std::thread::yield_now();
    }
}

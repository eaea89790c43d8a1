//! In-process single flight: concurrent loads of one key share one run.
//!
//! The first caller of a key becomes its leader and runs the load in its own task; later
//! callers follow and wait for the leader's outcome. The leader's outcome is shared type-erased
//! (callers of one key normally agree on its type; one that does not simply loads itself).
//! If the leader's future is dropped before it finishes, its guard marks the flight abandoned
//! and removes it, so followers are released and the first of them to retry leads the next
//! flight. Nothing here may block on I/O or hold the map's mutex across an await.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// A finished load's outcome, shared with every follower.
pub(crate) type SharedOutcome = Arc<dyn Any + Send + Sync>;

#[derive(Clone)]
enum FlightState {
    Running,
    Finished(SharedOutcome),
    Abandoned,
}

struct Flight {
    state: watch::Sender<FlightState>,
    followers: AtomicUsize,
}

/// The flights in progress, by full key.
#[derive(Default)]
pub(crate) struct Flights {
    running: Mutex<HashMap<String, Arc<Flight>>>,
}

impl std::fmt::Debug for Flights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Flights")
            .field("running", &self.lock().len())
            .finish()
    }
}

/// A caller's part in a key's flight.
pub(crate) enum Role {
    /// Run the load, then [`Leader::finish`].
    Leader(Leader),
    /// Wait for the leader with [`Follower::outcome`].
    Follower(Follower),
}

impl Flights {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Flight>>> {
        // The map holds no invariant a panic could break mid-update.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Lead `key`'s flight, or follow the one already running.
    pub(crate) fn join(self: &Arc<Self>, key: &str) -> Role {
        let mut running = self.lock();
        if let Some(flight) = running.get(key) {
            flight.followers.fetch_add(1, Ordering::Relaxed);
            return Role::Follower(Follower {
                state: flight.state.subscribe(),
                flight: Arc::clone(flight),
            });
        }
        let (state, _) = watch::channel(FlightState::Running);
        let flight = Arc::new(Flight {
            state,
            followers: AtomicUsize::new(0),
        });
        running.insert(key.to_owned(), Arc::clone(&flight));
        Role::Leader(Leader {
            flights: Arc::clone(self),
            key: key.to_owned(),
            flight,
            finished: false,
        })
    }

    /// Whether a load of `key` is running in this process.
    #[cfg(test)]
    fn is_running(&self, key: &str) -> bool {
        self.lock().contains_key(key)
    }

    /// Callers waiting on another caller's load of `key` in this process.
    pub(crate) fn followers(&self, key: &str) -> usize {
        self.lock()
            .get(key)
            .map_or(0, |flight| flight.followers.load(Ordering::Relaxed))
    }

    fn end(&self, key: &str, flight: &Arc<Flight>, state: FlightState) {
        let mut running = self.lock();
        // Only our own flight: after an abandonment a successor may already run under `key`.
        if running.get(key).is_some_and(|f| Arc::ptr_eq(f, flight)) {
            running.remove(key);
        }
        flight.state.send_replace(state);
    }
}

/// The caller that runs a key's load. Dropping it unfinished releases the followers.
pub(crate) struct Leader {
    flights: Arc<Flights>,
    key: String,
    flight: Arc<Flight>,
    finished: bool,
}

impl Leader {
    /// Share the load's outcome with every follower and end the flight.
    pub(crate) fn finish(mut self, outcome: SharedOutcome) {
        self.finished = true;
        self.flights
            .end(&self.key, &self.flight, FlightState::Finished(outcome));
    }
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.finished {
            self.flights
                .end(&self.key, &self.flight, FlightState::Abandoned);
        }
    }
}

/// A caller waiting on a leader.
pub(crate) struct Follower {
    state: watch::Receiver<FlightState>,
    flight: Arc<Flight>,
}

impl Follower {
    /// The leader's outcome, or `None` when the leader was dropped before finishing (the
    /// caller should then join again and may lead).
    pub(crate) async fn outcome(mut self) -> Option<SharedOutcome> {
        let state = self
            .state
            .wait_for(|state| !matches!(state, FlightState::Running))
            .await
            .ok()?
            .clone();
        match state {
            FlightState::Finished(outcome) => Some(outcome),
            FlightState::Running | FlightState::Abandoned => None,
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.flight.followers.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leader(role: Role) -> Leader {
        match role {
            Role::Leader(leader) => leader,
            Role::Follower(_) => panic!("expected to lead"),
        }
    }

    fn follower(role: Role) -> Follower {
        match role {
            Role::Follower(follower) => follower,
            Role::Leader(_) => panic!("expected to follow"),
        }
    }

    /// Followers of a key get the leader's outcome; other keys are independent.
    #[tokio::test]
    async fn followers_share_the_outcome() {
        let flights = Arc::new(Flights::default());
        let lead = leader(flights.join("a"));
        let first = follower(flights.join("a"));
        let second = follower(flights.join("a"));
        let _other = leader(flights.join("b"));
        assert_eq!(flights.followers("a"), 2);
        lead.finish(Arc::new(7u32));
        for f in [first, second] {
            let outcome = f.outcome().await.expect("finished");
            assert_eq!(outcome.downcast_ref::<u32>(), Some(&7));
        }
        assert!(!flights.is_running("a"));
        assert!(flights.is_running("b"));
    }

    /// A dropped leader releases its followers, and the next caller leads a new flight.
    #[tokio::test]
    async fn dropped_leader_releases_followers() {
        let flights = Arc::new(Flights::default());
        let lead = leader(flights.join("k"));
        let waiting = follower(flights.join("k"));
        drop(lead);
        assert!(waiting.outcome().await.is_none());
        let successor = leader(flights.join("k"));
        let late = follower(flights.join("k"));
        successor.finish(Arc::new("done"));
        assert!(late.outcome().await.is_some());
    }

    /// An old leader ending late cannot remove its successor's flight.
    #[tokio::test]
    async fn stale_leader_cannot_end_a_successor() {
        let flights = Arc::new(Flights::default());
        let old = leader(flights.join("k"));
        flights.end("k", &old.flight, FlightState::Abandoned);
        let new = leader(flights.join("k"));
        drop(old);
        assert!(flights.is_running("k"));
        drop(new);
        assert!(!flights.is_running("k"));
    }
}

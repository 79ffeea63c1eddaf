//! RabbitMQ's `consumer_utilisation` of a classic queue: the share of time
//! its consumers could take a message at once, as a moving average with a
//! one-second half-life (rabbit_queue_consumers' `use` state and
//! `rabbit_misc:moving_average/4`). The queue flips the state when a
//! delivery pass ends with messages ready that no consumer can take
//! (prefetch full: inactive) or without (active); time is read only then
//! and when the figure is asked for.

use std::time::Instant;

/// RabbitMQ's `?USE_AVG_HALF_LIFE`: one second, in microseconds.
const HALF_LIFE_US: f64 = 1_000_000.0;

#[derive(Debug, Clone, Copy)]
enum State {
    /// Consumers can take messages since `since`.
    Active { since: Instant, avg: f64 },
    /// Every consumer is blocked since `since`, after `active_us` of use.
    Inactive {
        since: Instant,
        active_us: f64,
        avg: f64,
    },
}

/// The time-weighted use of a queue's consumers.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerUse {
    state: State,
}

fn micros(from: Instant, to: Instant) -> f64 {
    to.saturating_duration_since(from).as_secs_f64() * 1e6
}

/// The average after a period of `active_us` in use then `inactive_us`
/// blocked: its share of use, weighted by its length against the old.
fn use_avg(active_us: f64, inactive_us: f64, avg: f64) -> f64 {
    let time = active_us + inactive_us;
    if time <= 0.0 {
        return avg;
    }
    let weight = (time * 0.5f64.ln() / HALF_LIFE_US).exp();
    // = next·(1−w) + avg·w, written so a steady state stays exact.
    avg + (active_us / time - avg) * (1.0 - weight)
}

impl ConsumerUse {
    /// A new queue's consumers are in use (RabbitMQ starts at 1.0).
    pub fn new(now: Instant) -> Self {
        ConsumerUse {
            state: State::Active {
                since: now,
                avg: 1.0,
            },
        }
    }

    /// Records whether the consumers can take messages from `now` on.
    pub fn set(&mut self, active: bool, now: Instant) {
        self.state = match (self.state, active) {
            (State::Active { since, avg }, false) => State::Inactive {
                since: now,
                active_us: micros(since, now),
                avg,
            },
            (
                State::Inactive {
                    since,
                    active_us,
                    avg,
                },
                true,
            ) => State::Active {
                since: now,
                avg: use_avg(active_us, micros(since, now), avg),
            },
            (same, _) => same,
        };
    }

    /// The utilisation at `now`, between 0 and 1.
    pub fn utilisation(&self, now: Instant) -> f64 {
        let v = match self.state {
            State::Active { since, avg } => use_avg(micros(since, now), 0.0, avg),
            State::Inactive {
                since,
                active_us,
                avg,
            } => use_avg(active_us, micros(since, now), avg),
        };
        v.clamp(0.0, 1.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn always_active_stays_at_one() {
        let t0 = Instant::now();
        let u = ConsumerUse::new(t0);
        assert_eq!(u.utilisation(t0 + Duration::from_secs(5)), 1.0);
    }

    #[test]
    fn blocked_time_pulls_the_average_down_and_use_brings_it_back() {
        let t0 = Instant::now();
        let mut u = ConsumerUse::new(t0);
        u.set(false, t0 + Duration::from_millis(100));
        // Blocked for 10 s after 0.1 s of use: almost nothing.
        let low = u.utilisation(t0 + Duration::from_secs(10));
        assert!(low < 0.02, "{low}");
        // Half the time blocked, in short periods: about a half.
        let mut t = t0 + Duration::from_secs(10);
        u.set(true, t);
        for _ in 0..200 {
            t += Duration::from_millis(50);
            u.set(false, t);
            t += Duration::from_millis(50);
            u.set(true, t);
        }
        let half = u.utilisation(t);
        assert!((0.4..0.6).contains(&half), "{half}");
        // In use for 10 s: back near one.
        let high = u.utilisation(t + Duration::from_secs(10));
        assert!(high > 0.99, "{high}");
    }

    #[test]
    fn repeated_states_change_nothing() {
        let t0 = Instant::now();
        let mut u = ConsumerUse::new(t0);
        u.set(false, t0 + Duration::from_secs(1));
        u.set(false, t0 + Duration::from_secs(2));
        let a = u.utilisation(t0 + Duration::from_secs(3));
        let mut v = ConsumerUse::new(t0);
        v.set(false, t0 + Duration::from_secs(1));
        assert_eq!(a, v.utilisation(t0 + Duration::from_secs(3)));
    }
}

//! The service's notion of "now", injected so tests can pin time.

use std::sync::Mutex;
use time::OffsetDateTime;

/// A source of the current time. The service never calls `OffsetDateTime::now_utc` itself.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The wall clock, truncated to whole seconds (X.509 and our rows keep seconds).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        truncate(OffsetDateTime::now_utc())
    }
}

/// A clock that stands still until told to move; for tests.
#[derive(Debug)]
pub struct FixedClock(Mutex<OffsetDateTime>);

impl FixedClock {
    pub fn new(at: OffsetDateTime) -> Self {
        Self(Mutex::new(truncate(at)))
    }

    pub fn set(&self, at: OffsetDateTime) {
        *self.0.lock().expect("clock mutex is never poisoned") = truncate(at);
    }

    pub fn advance(&self, by: time::Duration) {
        let mut now = self.0.lock().expect("clock mutex is never poisoned");
        *now += by;
    }
}

impl Clock for FixedClock {
    fn now(&self) -> OffsetDateTime {
        *self.0.lock().expect("clock mutex is never poisoned")
    }
}

fn truncate(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0)
        .expect("zero nanoseconds is always valid")
}

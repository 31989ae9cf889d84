//! The service's notion of now: the wall clock, or, for tests only, a clock set by an admin.

use std::sync::Mutex;

use custos_core::Timestamp;

#[derive(Debug)]
pub enum Clock {
    System,
    /// Starts at a given time and moves only by `PUT /v1/admin/clock`.
    Manual(Mutex<Timestamp>),
}

impl Clock {
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => system_now(),
            Clock::Manual(now) => now.lock().map_or_else(|e| *e.into_inner(), |now| *now),
        }
    }

    /// Sets a manual clock; `false` on the system clock, which nobody may set.
    pub fn set(&self, to: Timestamp) -> bool {
        match self {
            Clock::System => false,
            Clock::Manual(now) => {
                if let Ok(mut now) = now.lock() {
                    *now = to;
                }
                true
            }
        }
    }
}

pub fn system_now() -> Timestamp {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    Timestamp::from_unix_millis(millis).unwrap_or(Timestamp::MAX)
}

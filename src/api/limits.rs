//! Per-principal concurrency: one device, gateway or operator cannot take all of the service.
//! Past its limit a caller gets RESOURCE_EXHAUSTED at once rather than queueing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

#[derive(Debug)]
pub struct PrincipalLimiter {
    per_principal: usize,
    semaphores: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl PrincipalLimiter {
    pub fn new(per_principal: usize) -> Self {
        Self {
            per_principal: per_principal.max(1),
            semaphores: Mutex::new(HashMap::new()),
        }
    }

    /// A permit held for the duration of one request by `uri`.
    pub fn try_acquire(&self, uri: &str) -> Result<OwnedSemaphorePermit, Error> {
        let semaphore = {
            let mut map = self
                .semaphores
                .lock()
                .expect("limiter lock is never poisoned");
            // Forget principals with nothing in flight, so the map stays small.
            if map.len() > 10_000 {
                map.retain(|_, s| s.available_permits() < self.per_principal);
            }
            map.entry(uri.to_owned())
                .or_insert_with(|| Arc::new(Semaphore::new(self.per_principal)))
                .clone()
        };
        semaphore.try_acquire_owned().map_err(|_| {
            Error::ResourceExhausted(format!(
                "{uri} already has {} requests in flight; retry when one completes",
                self.per_principal
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_principal_past_its_limit_is_refused_until_a_request_completes() {
        let limiter = PrincipalLimiter::new(2);
        let a1 = limiter.try_acquire("spiffe://t/device/a").unwrap();
        let _a2 = limiter.try_acquire("spiffe://t/device/a").unwrap();
        assert!(matches!(
            limiter.try_acquire("spiffe://t/device/a"),
            Err(Error::ResourceExhausted(_))
        ));
        // Others are unaffected.
        assert!(limiter.try_acquire("spiffe://t/device/b").is_ok());
        drop(a1);
        assert!(limiter.try_acquire("spiffe://t/device/a").is_ok());
    }
}

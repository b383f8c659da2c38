//! Token buckets for the optional bandwidth and request-rate limits, shared by every transfer in a process.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug)]
pub struct RateLimiter {
    per_sec: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// `per_sec` units a second with a burst of one second's worth. None when `per_sec` is 0 (unlimited).
    pub fn new(per_sec: u64) -> Option<Self> {
        (per_sec > 0).then(|| Self {
            per_sec: per_sec as f64,
            state: Mutex::new((per_sec as f64, Instant::now())),
        })
    }

    /// Take `n` units, waiting as long as the rate requires. Requests larger than the burst go into debt.
    pub async fn acquire(&self, n: u64) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.per_sec;
            s.0 = (s.0 + refill).min(self.per_sec);
            s.1 = now;
            s.0 -= n as f64;
            if s.0 >= 0.0 {
                Duration::ZERO
            } else {
                Duration::from_secs_f64(-s.0 / self.per_sec)
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// The limits one process applies to its S3 traffic.
#[derive(Debug, Default)]
pub struct Limits {
    pub bandwidth: Option<RateLimiter>,
    pub requests: Option<RateLimiter>,
}

impl Limits {
    pub fn new(bytes_per_sec: u64, requests_per_sec: u32) -> Self {
        Self {
            bandwidth: RateLimiter::new(bytes_per_sec),
            requests: RateLimiter::new(requests_per_sec.into()),
        }
    }

    pub async fn request(&self) {
        if let Some(r) = &self.requests {
            r.acquire(1).await;
        }
    }

    pub async fn bytes(&self, n: u64) {
        if let Some(b) = &self.bandwidth {
            b.acquire(n).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn rate_is_held_over_time() {
        let l = RateLimiter::new(100).unwrap();
        let start = tokio::time::Instant::now();
        for _ in 0..30 {
            l.acquire(10).await; // 300 units at 100/s with a 100 burst: ~2 s
        }
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(1900), "{took:?}");
        assert!(took <= Duration::from_millis(2200), "{took:?}");
    }

    #[test]
    fn zero_means_unlimited() {
        assert!(RateLimiter::new(0).is_none());
    }
}

/// Bytes of object data a worker may hold at once (part and object buffers, from GET until the PUT is done
/// and the bytes are hashed): what bounds its memory, whatever mix of objects and parts is in flight.
#[derive(Debug, Clone)]
pub struct MemoryBudget {
    sem: std::sync::Arc<tokio::sync::Semaphore>,
    total_kib: u32,
}

impl MemoryBudget {
    pub fn new(bytes: u64) -> Self {
        let total_kib = bytes.div_ceil(1024).clamp(1, u32::MAX as u64) as u32;
        Self {
            sem: std::sync::Arc::new(tokio::sync::Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_kib as u64 * 1024
    }

    /// Wait until `bytes` fit. A buffer larger than the whole budget waits for all of it and runs alone.
    pub async fn reserve(&self, bytes: u64) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let kib = bytes.div_ceil(1024).clamp(1, self.total_kib as u64) as u32;
        self.sem.clone().acquire_many_owned(kib).await.ok()
    }
}

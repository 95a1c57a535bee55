//! Resident memory of this process, sampled while a run goes on.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Current resident set size in MiB (Linux), or 0 where it cannot be read.
pub fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Samples RSS every 100 ms until stopped.
pub struct Sampler {
    samples: Arc<Mutex<Vec<f64>>>,
    stop: CancellationToken,
}

impl Sampler {
    /// Starts sampling.
    pub fn start() -> Self {
        let samples = Arc::new(Mutex::new(vec![rss_mib()]));
        let stop = CancellationToken::new();
        let (s, t) = (samples.clone(), stop.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = t.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                }
                s.lock().unwrap_or_else(|e| e.into_inner()).push(rss_mib());
            }
        });
        Self { samples, stop }
    }

    /// Stops; returns (peak, growth from the end of the first tenth to the end).
    pub fn finish(self) -> (f64, f64) {
        self.stop.cancel();
        let mut v = self
            .samples
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        v.push(rss_mib());
        let peak = v.iter().copied().fold(0.0, f64::max);
        // The first tenth is warm-up (pools, buffers); growth after it is what would leak.
        let warm = v[(v.len() / 10).min(v.len() - 1)];
        let end = v[v.len() - 1];
        (peak, end - warm)
    }
}

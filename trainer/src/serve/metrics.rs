//! What `/metrics` says, in Prometheus' text format: requests by code, latency and batch-size
//! histograms, queue depth, predictions by class, served versions and drift scores.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};

/// Request latency buckets, seconds.
const LATENCY: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
];
/// Batch size buckets, rows.
const BATCH: [f64; 10] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

#[derive(Debug, Default)]
struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, bounds: &[f64], v: f64) {
        if self.counts.is_empty() {
            self.counts = vec![0; bounds.len()];
        }
        for (c, &b) in self.counts.iter_mut().zip(bounds) {
            if v <= b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str, bounds: &[f64]) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, &b) in bounds.iter().enumerate() {
            let c = self.counts.get(i).copied().unwrap_or(0);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {c}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum);
        let _ = writeln!(out, "{name}_count{{{labels}}} {}", self.count);
    }
}

/// The server's counters. Cheap to update from any thread.
#[derive(Debug, Default)]
pub struct Metrics {
    /// `(model, endpoint, code) -> count`.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    batches: Mutex<BTreeMap<String, Histogram>>,
    /// `(model, class) -> count`.
    predictions: Mutex<BTreeMap<(String, String), u64>>,
    pub queue_depth: AtomicI64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn request(&self, model: &str, endpoint: &str, code: u16, seconds: f64) {
        let key = (model.to_string(), endpoint.to_string());
        *self
            .requests
            .lock()
            .expect("metrics lock")
            .entry((key.0.clone(), key.1.clone(), code))
            .or_default() += 1;
        self.latency
            .lock()
            .expect("metrics lock")
            .entry(key)
            .or_default()
            .observe(&LATENCY, seconds);
    }

    /// Requests answered so far, every code.
    pub fn answered(&self) -> u64 {
        self.requests.lock().expect("metrics lock").values().sum()
    }

    pub fn batch(&self, model: &str, rows: usize) {
        self.batches
            .lock()
            .expect("metrics lock")
            .entry(model.to_string())
            .or_default()
            .observe(&BATCH, rows as f64);
    }

    pub fn predicted(&self, model: &str, class: &str) {
        *self
            .predictions
            .lock()
            .expect("metrics lock")
            .entry((model.to_string(), class.to_string()))
            .or_default() += 1;
    }

    /// The text of `/metrics`; `versions` are `(model, version)` pairs served, `drift` are
    /// `(model, feature, psi, ks)` and `window` `(model, rows)`.
    pub fn render(
        &self,
        versions: &[(String, String)],
        drift: &[(String, String, f64, Option<f64>)],
        window: &[(String, usize)],
    ) -> String {
        let mut s = String::new();
        s.push_str("# HELP kiln_requests_total Requests answered, by model, endpoint and HTTP status.\n# TYPE kiln_requests_total counter\n");
        for ((m, e, c), n) in self.requests.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "kiln_requests_total{{model=\"{}\",endpoint=\"{}\",code=\"{c}\"}} {n}",
                escape(m),
                escape(e)
            );
        }
        s.push_str("# HELP kiln_request_duration_seconds Time from a request's arrival to its answer.\n# TYPE kiln_request_duration_seconds histogram\n");
        for ((m, e), h) in self.latency.lock().expect("metrics lock").iter() {
            let labels = format!("model=\"{}\",endpoint=\"{}\"", escape(m), escape(e));
            h.write(&mut s, "kiln_request_duration_seconds", &labels, &LATENCY);
        }
        s.push_str("# HELP kiln_batch_rows Rows per forward pass of the dynamic batcher.\n# TYPE kiln_batch_rows histogram\n");
        for (m, h) in self.batches.lock().expect("metrics lock").iter() {
            h.write(
                &mut s,
                "kiln_batch_rows",
                &format!("model=\"{}\"", escape(m)),
                &BATCH,
            );
        }
        let _ = writeln!(
            s,
            "# HELP kiln_queue_depth Requests waiting for the batcher.\n# TYPE kiln_queue_depth gauge\nkiln_queue_depth {}",
            self.queue_depth.load(Ordering::Relaxed).max(0)
        );
        s.push_str("# HELP kiln_predictions_total Predictions served, by model and predicted class.\n# TYPE kiln_predictions_total counter\n");
        for ((m, c), n) in self.predictions.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                s,
                "kiln_predictions_total{{model=\"{}\",class=\"{}\"}} {n}",
                escape(m),
                escape(c)
            );
        }
        s.push_str("# HELP kiln_model_version_info The version each model name serves.\n# TYPE kiln_model_version_info gauge\n");
        for (m, v) in versions {
            let _ = writeln!(
                s,
                "kiln_model_version_info{{model=\"{}\",version=\"{}\"}} 1",
                escape(m),
                escape(v)
            );
        }
        s.push_str("# HELP kiln_drift_window_rows Served rows in the drift window.\n# TYPE kiln_drift_window_rows gauge\n");
        for (m, n) in window {
            let _ = writeln!(s, "kiln_drift_window_rows{{model=\"{}\"}} {n}", escape(m));
        }
        s.push_str("# HELP kiln_drift_psi Population stability index of the drift window against the training data.\n# TYPE kiln_drift_psi gauge\n");
        for (m, f, psi, _) in drift {
            let _ = writeln!(
                s,
                "kiln_drift_psi{{model=\"{}\",feature=\"{}\"}} {psi}",
                escape(m),
                escape(f)
            );
        }
        s.push_str("# HELP kiln_drift_ks Kolmogorov-Smirnov statistic of the drift window (numeric features).\n# TYPE kiln_drift_ks gauge\n");
        for (m, f, _, ks) in drift {
            if let Some(ks) = ks {
                let _ = writeln!(
                    s,
                    "kiln_drift_ks{{model=\"{}\",feature=\"{}\"}} {ks}",
                    escape(m),
                    escape(f)
                );
            }
        }
        s
    }
}

//! The watchdog's Prometheus metrics, with of-watchdog's names and labels:
//! `http_requests_total{code,method}`,
//! `http_request_duration_seconds{code,method}` (histogram) and
//! `http_requests_in_flight`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use graphene_core::histogram::{escape, Histogram};

#[derive(Default)]
pub struct Metrics {
    /// Per status code and (lower-case) method.
    calls: Mutex<BTreeMap<(u16, String), Histogram>>,
}

impl Metrics {
    pub fn observe(&self, code: u16, method: &str, seconds: f64) {
        self.calls
            .lock()
            .expect("metrics lock")
            .entry((code, method.to_string()))
            .or_default()
            .observe(seconds);
    }

    pub fn render(&self, in_flight: usize) -> String {
        let calls = self.calls.lock().expect("metrics lock").clone();
        let mut out = String::new();
        out.push_str("# HELP http_requests_total total HTTP requests processed\n");
        out.push_str("# TYPE http_requests_total counter\n");
        for ((code, method), h) in &calls {
            let _ = writeln!(
                out,
                "http_requests_total{{code=\"{code}\",method=\"{}\"}} {}",
                escape(method),
                h.count()
            );
        }
        out.push_str("# HELP http_request_duration_seconds Seconds spent serving HTTP requests.\n");
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for ((code, method), h) in &calls {
            let labels = format!("code=\"{code}\",method=\"{}\"", escape(method));
            h.render(&mut out, "http_request_duration_seconds", &labels);
        }
        out.push_str("# HELP http_requests_in_flight total HTTP requests in-flight\n");
        out.push_str("# TYPE http_requests_in_flight gauge\n");
        let _ = writeln!(out, "http_requests_in_flight {in_flight}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_of_watchdog_series() {
        let m = Metrics::default();
        m.observe(200, "post", 0.02);
        m.observe(200, "post", 3.0);
        m.observe(429, "get", 0.001);
        let text = m.render(1);
        assert!(text.contains("http_requests_total{code=\"200\",method=\"post\"} 2\n"));
        assert!(text.contains("http_requests_total{code=\"429\",method=\"get\"} 1\n"));
        assert!(text.contains(
            "http_request_duration_seconds_bucket{code=\"200\",method=\"post\",le=\"0.025\"} 1\n"
        ));
        assert!(
            text.contains("http_request_duration_seconds_count{code=\"200\",method=\"post\"} 2\n")
        );
        assert!(text.contains("http_requests_in_flight 1\n"));
    }
}

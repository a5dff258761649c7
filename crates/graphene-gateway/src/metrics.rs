//! Prometheus metrics with OpenFaaS's gateway names and labels, so existing
//! dashboards work: `gateway_function_invocation_total{function_name,code}`,
//! `gateway_functions_seconds{function_name,code}` (histogram),
//! `gateway_function_invocation_started{function_name}` and
//! `gateway_service_count{function_name}`; plus graphene's own: ready and
//! desired replicas, restarts, calls in flight and queued, scale events and
//! the cold-start wait.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;

use graphene_core::histogram::{escape, Histogram};
use graphene_core::names::FunctionRef;

#[derive(Default)]
pub struct Metrics {
    started: Mutex<BTreeMap<FunctionRef, u64>>,
    /// Per function, per status code.
    finished: Mutex<BTreeMap<FunctionRef, BTreeMap<u16, Histogram>>>,
    /// Per function and direction (`up`, `down`).
    scale_events: Mutex<BTreeMap<(FunctionRef, &'static str), u64>>,
    /// How long calls waited for a first replica.
    cold_starts: Mutex<BTreeMap<FunctionRef, Histogram>>,
    /// Asynchronous calls per function and result (`succeeded`, `failed`,
    /// `retried`).
    jobs: Mutex<BTreeMap<(FunctionRef, &'static str), u64>>,
    /// Per principal and result (`allowed`, `denied`, `limited`).
    principals: Mutex<BTreeMap<(String, &'static str), u64>>,
}

/// Name, type, help text and value of a per-function gauge.
type Gauge = (
    &'static str,
    &'static str,
    &'static str,
    fn(&ReplicaGauge) -> u64,
);

/// A function's replica view at scrape time.
pub struct ReplicaGauge {
    pub function: FunctionRef,
    pub desired: u64,
    pub ready: u64,
    pub restarts: u64,
    pub in_flight: u64,
    pub queued: u64,
}

impl Metrics {
    pub fn started(&self, function: &FunctionRef) {
        let mut map = self.started.lock().expect("metrics lock");
        match map.get_mut(function) {
            Some(n) => *n += 1,
            None => {
                map.insert(function.clone(), 1);
            }
        }
    }

    pub fn finished(&self, function: &FunctionRef, code: u16, seconds: f64) {
        let mut map = self.finished.lock().expect("metrics lock");
        if !map.contains_key(function) {
            map.insert(function.clone(), BTreeMap::new());
        }
        map.get_mut(function)
            .expect("inserted above")
            .entry(code)
            .or_default()
            .observe(seconds);
    }

    pub fn scaled(&self, function: &FunctionRef, up: bool) {
        *self
            .scale_events
            .lock()
            .expect("metrics lock")
            .entry((function.clone(), if up { "up" } else { "down" }))
            .or_default() += 1;
    }

    pub fn cold_start(&self, function: &FunctionRef, seconds: f64) {
        self.cold_starts
            .lock()
            .expect("metrics lock")
            .entry(function.clone())
            .or_default()
            .observe(seconds);
    }

    pub fn job(&self, function: &FunctionRef, result: &'static str) {
        *self
            .jobs
            .lock()
            .expect("metrics lock")
            .entry((function.clone(), result))
            .or_default() += 1;
    }

    /// An access check's outcome for a principal.
    pub fn access(&self, principal: &str, result: &'static str) {
        *self
            .principals
            .lock()
            .expect("metrics lock")
            .entry((principal.to_string(), result))
            .or_default() += 1;
    }

    /// Completed invocations of one function (for `invocationCount`).
    pub fn invocations(&self, function: &FunctionRef) -> u64 {
        self.finished
            .lock()
            .expect("metrics lock")
            .get(function)
            .map_or(0, |codes| codes.values().map(Histogram::count).sum())
    }

    pub fn render(&self, replicas: &[ReplicaGauge]) -> String {
        let mut out = String::new();
        out.push_str("# HELP gateway_function_invocation_started The total number of function HTTP requests started.\n");
        out.push_str("# TYPE gateway_function_invocation_started counter\n");
        for (f, n) in self.started.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "gateway_function_invocation_started{{function_name=\"{f}\"}} {n}"
            );
        }
        let finished = self.finished.lock().expect("metrics lock");
        out.push_str("# HELP gateway_function_invocation_total Function metrics\n");
        out.push_str("# TYPE gateway_function_invocation_total counter\n");
        for (f, code, s) in finished
            .iter()
            .flat_map(|(f, codes)| codes.iter().map(move |(c, s)| (f, c, s)))
        {
            let _ = writeln!(
                out,
                "gateway_function_invocation_total{{code=\"{code}\",function_name=\"{f}\"}} {}",
                s.count()
            );
        }
        out.push_str("# HELP gateway_functions_seconds Function time taken\n");
        out.push_str("# TYPE gateway_functions_seconds histogram\n");
        for (f, code, s) in finished
            .iter()
            .flat_map(|(f, codes)| codes.iter().map(move |(c, s)| (f, c, s)))
        {
            let labels = format!("code=\"{code}\",function_name=\"{f}\"");
            s.render(&mut out, "gateway_functions_seconds", &labels);
        }
        drop(finished);
        out.push_str("# HELP graphene_cold_start_wait_seconds How long calls waited for a first replica of a function at zero or starting\n");
        out.push_str("# TYPE graphene_cold_start_wait_seconds histogram\n");
        for (f, s) in self.cold_starts.lock().expect("metrics lock").iter() {
            s.render(
                &mut out,
                "graphene_cold_start_wait_seconds",
                &format!("function_name=\"{f}\""),
            );
        }
        out.push_str("# HELP graphene_scale_events_total Replica count changes made by the autoscaler or a call waking a function\n");
        out.push_str("# TYPE graphene_scale_events_total counter\n");
        for ((f, direction), n) in self.scale_events.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "graphene_scale_events_total{{direction=\"{direction}\",function_name=\"{f}\"}} {n}"
            );
        }
        out.push_str("# HELP graphene_async_jobs_total Attempts of asynchronous calls: succeeded, failed (for good) or retried\n");
        out.push_str("# TYPE graphene_async_jobs_total counter\n");
        for ((f, result), n) in self.jobs.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "graphene_async_jobs_total{{function_name=\"{f}\",result=\"{result}\"}} {n}"
            );
        }
        out.push_str("# HELP graphene_principal_requests_total Access checks per principal: allowed, denied (401/403) or limited (429)\n");
        out.push_str("# TYPE graphene_principal_requests_total counter\n");
        for ((p, result), n) in self.principals.lock().expect("metrics lock").iter() {
            let _ = writeln!(
                out,
                "graphene_principal_requests_total{{principal=\"{}\",result=\"{result}\"}} {n}",
                escape(p)
            );
        }
        let gauges: [Gauge; 6] = [
            (
                "gateway_service_count",
                "gauge",
                "Current count of replicas for function",
                |g| g.desired,
            ),
            (
                "graphene_function_ready_replicas",
                "gauge",
                "Replicas whose handler has imported",
                |g| g.ready,
            ),
            (
                "graphene_function_desired_replicas",
                "gauge",
                "Replicas the function should have now",
                |g| g.desired,
            ),
            (
                "graphene_function_restarts_total",
                "counter",
                "Worker and process restarts after an unexpected exit",
                |g| g.restarts,
            ),
            (
                "graphene_function_in_flight",
                "gauge",
                "Calls running or waiting for a worker",
                |g| g.in_flight,
            ),
            (
                "graphene_function_queued",
                "gauge",
                "Calls waiting for a worker",
                |g| g.queued,
            ),
        ];
        for (name, kind, help, value) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for g in replicas {
                let _ = writeln!(
                    out,
                    "{name}{{function_name=\"{}\"}} {}",
                    g.function,
                    value(g)
                );
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_openfaas_names() {
        let m = Metrics::default();
        let echo = FunctionRef::new("openfaas-fn", "echo");
        m.started(&echo);
        m.finished(&echo, 200, 0.02);
        m.finished(&echo, 500, 3.0);
        m.scaled(&echo, true);
        m.cold_start(&echo, 0.004);
        let text = m.render(&[ReplicaGauge {
            function: echo.clone(),
            desired: 2,
            ready: 1,
            restarts: 0,
            in_flight: 3,
            queued: 1,
        }]);
        assert!(text
            .contains("gateway_function_invocation_started{function_name=\"echo.openfaas-fn\"} 1"));
        assert!(text.contains(
            "gateway_function_invocation_total{code=\"200\",function_name=\"echo.openfaas-fn\"} 1"
        ));
        assert!(text.contains("gateway_functions_seconds_bucket{code=\"200\",function_name=\"echo.openfaas-fn\",le=\"0.025\"} 1"));
        assert!(text.contains("gateway_functions_seconds_bucket{code=\"500\",function_name=\"echo.openfaas-fn\",le=\"2.5\"} 0"));
        assert!(text.contains("gateway_service_count{function_name=\"echo.openfaas-fn\"} 2"));
        assert!(text.contains("graphene_function_in_flight{function_name=\"echo.openfaas-fn\"} 3"));
        assert!(text.contains(
            "graphene_scale_events_total{direction=\"up\",function_name=\"echo.openfaas-fn\"} 1"
        ));
        assert!(text.contains(
            "graphene_cold_start_wait_seconds_bucket{function_name=\"echo.openfaas-fn\",le=\"0.005\"} 1"
        ));
        assert_eq!(m.invocations(&echo), 2);
        m.access("user:a\"b", "limited");
        assert!(m.render(&[]).contains(
            "graphene_principal_requests_total{principal=\"user:a\\\"b\",result=\"limited\"} 1"
        ));
    }
}

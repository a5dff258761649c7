use clap::Args;
use graphene_core::api::FunctionStatus;
use hyper::Method;

use super::{encode, Target};

#[derive(Args)]
pub struct Describe {
    pub name: String,
    /// Print JSON instead of text
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub target: Target,
}

impl Describe {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        let path = format!(
            "/system/function/{}{}",
            encode(&self.name),
            self.target.ns_query()
        );
        let body = client.expect(Method::GET, &path, Vec::new()).await?;
        if self.json {
            println!("{}", String::from_utf8_lossy(&body));
            return Ok(());
        }
        let f: FunctionStatus = serde_json::from_slice(&body)?;
        let row = |k: &str, v: &dyn std::fmt::Display| println!("{k:<20} {v}");
        row("Name:", &f.name);
        row("Namespace:", &f.namespace);
        row("Image:", &f.image);
        row(
            "Status:",
            &if f.available_replicas > 0 {
                "Ready"
            } else {
                "Not Ready"
            },
        );
        row("Replicas:", &f.replicas);
        row("Available replicas:", &f.available_replicas);
        row("Invocations:", &f.invocation_count);
        row("Created:", &f.created_at);
        if !f.env_process.is_empty() {
            row("fprocess:", &f.env_process);
        }
        row(
            "URL:",
            &format!("{}/function/{}.{}", client.base, f.name, f.namespace),
        );
        if !f.secrets.is_empty() {
            row("Secrets:", &f.secrets.join(", "));
        }
        let Some(rt) = &f.graphene else {
            return Ok(());
        };
        if let Some(n) = rt.serving_revision {
            row("Serving revision:", &n);
        }
        if let Some(l) = &rt.latest {
            let reason = match l.reason.is_empty() {
                true => String::new(),
                false => format!(": {}", l.reason),
            };
            row(
                "Latest revision:",
                &format!("{} {}{reason}", l.revision, l.state.as_str()),
            );
        }
        if let Some(r) = rt.reconcile.as_ref().filter(|r| !r.in_sync) {
            row(
                "Runtime:",
                &match &r.last_error {
                    Some(e) => format!("behind ({} failed attempts): {e}", r.attempts),
                    None => "catching up".to_string(),
                },
            );
        }
        if let Some(sc) = &rt.scaling {
            let zero = sc
                .zero_after_seconds
                .map_or("never".to_string(), |s| format!("after {s}s idle"));
            row(
                "Autoscaling:",
                &if sc.enabled {
                    format!(
                        "{} {}..{}, target {:.1} {} per replica, window {}s, to zero {zero}",
                        if sc.panicking { "PANIC" } else { "on" },
                        sc.min,
                        sc.max,
                        sc.target,
                        sc.metric,
                        sc.window_seconds
                    )
                } else {
                    "off (min == max): scale by hand".to_string()
                },
            );
            row("In flight:", &sc.in_flight);
            if let Some(d) = &sc.last_decision {
                row(
                    "Last decision:",
                    &format!("{} -> {} at {}: {}", d.from, d.to, d.at, d.reason),
                );
            }
        }
        // What only this runtime knows, as it tells it.
        for (k, v) in &rt.details {
            row(&format!("{}:", humanize(k)), &value(v));
        }
        for i in &rt.instances {
            let state = if i.ready { "ready" } else { "starting" };
            let details: Vec<String> = i
                .details
                .iter()
                .map(|(k, v)| format!("{k}={}", value(v)))
                .collect();
            println!(
                "  instance {:<16} revision {:<4} {:<9} started {} {}",
                i.id,
                i.revision,
                state,
                i.started_at,
                details.join(" ")
            );
        }
        Ok(())
    }
}

/// `workersPerReplica` → `Workers per replica`.
fn humanize(key: &str) -> String {
    let mut out = String::new();
    for (i, c) in key.chars().enumerate() {
        match (i, c.is_ascii_uppercase()) {
            (0, _) => out.push(c.to_ascii_uppercase()),
            (_, true) => {
                out.push(' ');
                out.push(c.to_ascii_lowercase());
            }
            _ => out.push(c),
        }
    }
    out
}

/// A detail's value as text: strings bare, objects as `k=v` pairs.
fn value(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(m) => m
            .iter()
            .map(|(k, v)| format!("{k}={}", value(v)))
            .collect::<Vec<_>>()
            .join(" "),
        serde_json::Value::Array(a) => a.iter().map(value).collect::<Vec<_>>().join(","),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn humanizes_detail_keys() {
        assert_eq!(super::humanize("importError"), "Import error");
        assert_eq!(super::humanize("restarts"), "Restarts");
        assert_eq!(
            super::value(&serde_json::json!({"pid": 3, "ready": true})),
            "pid=3 ready=true"
        );
    }
}

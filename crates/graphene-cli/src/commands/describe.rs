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
        if let Some(rt) = &f.graphene {
            row("Workers/replica:", &rt.workers_per_replica);
            row("Timeout:", &format!("{}s", rt.timeout_seconds));
            row("Restarts:", &rt.restarts);
            if let Some(e) = &rt.last_exit {
                row("Last exit:", e);
            }
            if let Some(e) = &rt.import_error {
                row("Import error:", e);
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
                row(
                    "In flight:",
                    &format!("{} ({} queued)", sc.in_flight, rt.queued),
                );
                if let Some(d) = &sc.last_decision {
                    row(
                        "Last decision:",
                        &format!("{} -> {} at {}: {}", d.from, d.to, d.at, d.reason),
                    );
                }
            }
            if let Some(p) = &rt.parent {
                row(
                    "Warm parent:",
                    &format!(
                        "pid {} {} (replicas fork from it)",
                        p.pid,
                        if p.ready { "ready" } else { "importing" }
                    ),
                );
            }
            for i in &rt.instances {
                println!(
                    "  replica {:<16} pid {:<8} {:<10} workers {} in flight {} started {}",
                    i.id,
                    i.pid,
                    match (i.retiring, i.draining, i.ready) {
                        (true, _, _) => "retiring",
                        (_, true, _) => "draining",
                        (_, _, true) => "ready",
                        _ => "starting",
                    },
                    i.workers,
                    i.in_flight,
                    i.started_at
                );
            }
        }
        Ok(())
    }
}

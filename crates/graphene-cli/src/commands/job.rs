use clap::{Args, Subcommand};
use hyper::Method;
use serde_json::Value;

use super::{encode, Target};

#[derive(Args)]
pub struct Job {
    #[command(subcommand)]
    pub command: JobCommand,
    #[command(flatten)]
    pub target: Target,
}

#[derive(Subcommand)]
pub enum JobCommand {
    /// Show an asynchronous call: state, attempts, timings, result.
    Status {
        call_id: String,
        /// Print the JSON the gateway answered
        #[arg(long)]
        json: bool,
    },
    /// List asynchronous calls, newest first (`--state failed` is the dead-letter list).
    #[command(alias = "ls")]
    List {
        /// Only this function's
        #[arg(long)]
        function: Option<String>,
        /// queued, running, succeeded, failed or cancelled
        #[arg(long)]
        state: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Cancel a queued call.
    Cancel { call_id: String },
}

fn when(v: &Value, key: &str) -> String {
    v[key]
        .as_u64()
        .map(|ms| {
            let t = graphene_core::time::rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms),
            );
            // To the millisecond.
            format!("{}Z", t.get(..23).unwrap_or(&t))
        })
        .unwrap_or_else(|| "-".into())
}

impl Job {
    pub async fn run(self) -> anyhow::Result<()> {
        let client = self.target.client(None)?;
        match self.command {
            JobCommand::Status { call_id, json } => {
                let body = client
                    .expect(
                        Method::GET,
                        &format!("/async-function/status/{}", encode(&call_id)),
                        "",
                    )
                    .await?;
                let v: Value = serde_json::from_slice(&body)?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&v)?);
                    return Ok(());
                }
                println!("Call id:     {}", v["callId"].as_str().unwrap_or(""));
                println!(
                    "Function:    {}.{}",
                    v["function"].as_str().unwrap_or(""),
                    v["namespace"].as_str().unwrap_or("")
                );
                println!("Status:      {}", v["status"].as_str().unwrap_or(""));
                println!("Attempts:    {} of {}", v["attempts"], v["maxAttempts"]);
                println!("Created:     {}", when(&v, "createdAt"));
                println!("Started:     {}", when(&v, "startedAt"));
                println!("Finished:    {}", when(&v, "finishedAt"));
                if v["nextAttemptAt"].is_u64() {
                    println!("Next try:    {}", when(&v, "nextAttemptAt"));
                }
                if let Some(code) = v["statusCode"].as_u64() {
                    println!("HTTP status: {code}");
                }
                if let Some(e) = v["lastError"].as_str() {
                    println!("Last error:  {e}");
                }
                if let Some(cb) = v.get("callback").filter(|c| c.is_object()) {
                    println!(
                        "Callback:    {} to {} ({} attempts)",
                        cb["status"].as_str().unwrap_or(""),
                        cb["url"].as_str().unwrap_or(""),
                        cb["attempts"]
                    );
                }
                if let Some(r) = v["result"].as_str() {
                    let cut = if v["resultTruncated"].as_bool() == Some(true) {
                        " (truncated)"
                    } else {
                        ""
                    };
                    println!("Result{cut}:\n{r}");
                }
            }
            JobCommand::List {
                function,
                state,
                limit,
            } => {
                let mut path = format!("/system/jobs{}", self.target.ns_query());
                path.push(if path.contains('?') { '&' } else { '?' });
                path.push_str(&format!("limit={limit}"));
                if let Some(f) = function {
                    path.push_str(&format!("&function={}", encode(&f)));
                }
                if let Some(s) = state {
                    path.push_str(&format!("&state={}", encode(&s)));
                }
                let body = client.expect(Method::GET, &path, "").await?;
                let list: Vec<Value> = serde_json::from_slice(&body)?;
                println!(
                    "{:<38} {:<20} {:<10} {:<8} {:<6} {:<22} LAST ERROR",
                    "CALL ID", "FUNCTION", "STATUS", "ATTEMPTS", "CODE", "CREATED"
                );
                for v in list {
                    println!(
                        "{:<38} {:<20} {:<10} {:<8} {:<6} {:<22} {}",
                        v["callId"].as_str().unwrap_or(""),
                        v["function"].as_str().unwrap_or(""),
                        v["status"].as_str().unwrap_or(""),
                        v["attempts"],
                        v["statusCode"]
                            .as_u64()
                            .map_or("-".into(), |c| c.to_string()),
                        when(&v, "createdAt"),
                        v["lastError"].as_str().unwrap_or("")
                    );
                }
            }
            JobCommand::Cancel { call_id } => {
                client
                    .expect(
                        Method::DELETE,
                        &format!("/async-function/status/{}", encode(&call_id)),
                        "",
                    )
                    .await?;
                println!("Cancelled {call_id}");
            }
        }
        Ok(())
    }
}

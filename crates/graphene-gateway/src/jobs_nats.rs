//! Running jobs from NATS JetStream: one consumer loop per function (its
//! `max_ack_pending` is the function's async concurrency, across every
//! gateway) and one for callbacks. Each job is kept alive with in-progress
//! acks while it runs, retried with a delayed NAK, and acknowledged once its
//! outcome is recorded.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use graphene_core::names::FunctionRef;
use graphene_core::provider::Provider;
use graphene_queue::nats::{Message, NatsJobs, ACK_WAIT};

use crate::jobs::{deliver, now_ms, Decision};
use crate::Gateway;

impl<P: Provider> Gateway<P> {
    pub(crate) fn start_nats_jobs(self: &Arc<Self>, nats: Arc<NatsJobs>) {
        let gw = self.clone();
        let n = nats.clone();
        tokio::spawn(async move {
            // Functions with a consumer loop; a loop takes itself out when
            // its function is removed, so a redeploy starts a new one.
            let running: Arc<std::sync::Mutex<HashSet<FunctionRef>>> = Default::default();
            loop {
                for key in gw.registry.list(None).into_iter().map(|r| r.id.clone()) {
                    if running.lock().expect("consumers lock").insert(key.clone()) {
                        let (gw, n, running) = (gw.clone(), n.clone(), running.clone());
                        tokio::spawn(async move {
                            gw.consume(n, key.clone()).await;
                            running.lock().expect("consumers lock").remove(&key);
                        });
                    }
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let gw = self.clone();
        tokio::spawn(async move { gw.consume_callbacks(nats).await });
    }

    /// Runs one function's jobs while it is deployed, with its current
    /// concurrency (the consumer is updated when a redeploy changes it).
    async fn consume(self: Arc<Self>, nats: Arc<NatsJobs>, key: FunctionRef) {
        let (ns, function) = (key.namespace.clone(), key.name.clone());
        let current = |gw: &Self| gw.registry.get(&key).map(|r| r.async_concurrency());
        while let Some(concurrency) = current(&self) {
            let consumer = match nats.consumer(&ns, &function, concurrency).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(function = %function, error = %e, "job consumer");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let mut messages = match consumer.messages().await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(function = %function, error = %e, "job consumer");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                tokio::select! {
                    next = messages.next() => match next {
                        Some(Ok(msg)) => {
                            let (gw, nats) = (self.clone(), nats.clone());
                            tokio::spawn(async move { gw.run_nats_job(nats, Arc::new(msg)).await });
                        }
                        Some(Err(e)) => {
                            tracing::warn!(function = %function, error = %e, "job consumer");
                            break;
                        }
                        None => break,
                    },
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {
                        if current(&self) != Some(concurrency) {
                            break; // removed, or its concurrency changed
                        }
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn run_nats_job(self: Arc<Self>, nats: Arc<NatsJobs>, msg: Arc<Message>) {
        let job = match nats.begin(&msg, now_ms()).await {
            Ok(Some(j)) => j,
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "could not start a job; it will be delivered again");
                return;
            }
        };
        let (j, attempt) = job;
        let keepalive = {
            let msg = msg.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(ACK_WAIT / 3).await;
                    NatsJobs::in_progress(&msg).await;
                }
            })
        };
        let decision = self.attempt(&j, attempt).await;
        let recorded = match decision {
            Decision::Retry { wait, error } => {
                let next = now_ms() + wait.as_millis() as u64;
                nats.retry(&msg, &j.id, attempt, wait, next, &error).await
            }
            Decision::Finish { succeeded, outcome } => {
                nats.finish(&msg, &j.id, attempt, succeeded, &outcome, now_ms())
                    .await
            }
        };
        keepalive.abort();
        if let Err(e) = recorded {
            tracing::error!(call_id = %j.id, error = %e, "could not record a job's outcome; it will be delivered again");
        }
    }

    async fn consume_callbacks(self: Arc<Self>, nats: Arc<NatsJobs>) {
        let http = match graphene_http::client(None) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "no HTTP client for callbacks");
                return;
            }
        };
        loop {
            let consumer = match nats.callback_consumer().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "callback consumer");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let Ok(mut messages) = consumer.messages().await else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            while let Some(Ok(msg)) = messages.next().await {
                let (nats, http) = (nats.clone(), http.clone());
                tokio::spawn(async move {
                    let Some((cb, attempts)) = NatsJobs::callback_of(&msg) else {
                        let _ = msg.ack_with(graphene_queue::nats::AckKind::Term).await;
                        return;
                    };
                    let error = deliver(&http, &cb).await.err();
                    if let Some(e) = &error {
                        tracing::info!(call_id = %cb.id, url = %cb.url, error = %e, "callback not delivered; it will be tried again");
                    }
                    let wait = Duration::from_secs((1u64 << cb.attempts.min(8)).min(300));
                    if let Err(e) = nats
                        .callback_done(
                            &msg,
                            &cb.id,
                            attempts,
                            graphene_queue::CALLBACK_ATTEMPTS,
                            error.as_deref(),
                            wait,
                        )
                        .await
                    {
                        tracing::warn!(error = %e, "could not record a callback");
                    }
                });
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

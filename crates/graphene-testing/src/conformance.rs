//! The provider conformance suite: what every [`Provider`] must do, run
//! against a real one. A provider's tests implement [`Harness`] (how to
//! make a deployment of one of the suite's images) and call [`run`].
//!
//! The suite's images answer a call with their version (`a` or `b`) and
//! log it; `hang` runs past the timeout (3 s), `slow` takes 1.5 s, `crash`
//! kills the replica mid-call. The broken image's handler never loads;
//! the missing one does not exist. Deployments allow one call at a time per
//! replica and at most two replicas, so that overload is reachable.
//!
//! Covered: deploy, update, a failed update that keeps the previous
//! revision serving, rollback (a new revision of an old image), scale,
//! zero and wake, status (rollout, instances), logs (kept and followed),
//! remove, and the error classes a caller can cause: not found (404),
//! invalid (400), unavailable (503), timeout (504), upstream (502),
//! overloaded (429).

use std::future::Future;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use graphene_core::api::{Rollout, RolloutState};
use graphene_core::names::FunctionRef;
use graphene_core::provider::{Deployment, Invocation, LogQuery, Provider, ProviderError};

/// The suite's images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Image {
    /// Answers `a`.
    A,
    /// Answers `b`.
    B,
    /// Its handler fails to load.
    Broken,
    /// Not built anywhere.
    Missing,
}

/// The suite's handler (the `python3` template) answering `version`:
/// `hang` runs past the timeout, `slow` takes 1.5 s, `crash` kills the
/// replica mid-call, anything else is logged and answered.
pub fn handler(version: &str) -> String {
    format!(
        r#"import os, time

VERSION = "{version}"

def handle(req):
    if req == "hang":
        time.sleep(60)
    if req == "slow":
        time.sleep(1.5)
    if req == "crash":
        os._exit(3)
    print("called with " + req, flush=True)
    return VERSION
"#
    )
}

/// A handler whose import fails.
pub fn broken_handler() -> String {
    format!("import not_installed_anywhere\n{}", handler("x"))
}

/// A deployment of `image` (with its build's digest, if a builder made
/// it) as `revision`: a 3 s timeout, one call at a time per replica, at
/// most two replicas.
pub fn deployment(
    f: &FunctionRef,
    revision: u64,
    image: &str,
    image_digest: &str,
    replicas: u64,
) -> Deployment {
    let map = |kv: &[(&str, &str)]| {
        Some(
            kv.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let spec = graphene_core::api::FunctionDeployment {
        service: f.name.clone(),
        image: image.into(),
        namespace: f.namespace.clone(),
        labels: map(&[("com.openfaas.scale.max", "2")]),
        annotations: map(&[
            ("com.graphene.workers", "1"),
            ("com.graphene.timeout", "3s"),
        ]),
        ..Default::default()
    };
    Deployment {
        function: f.clone(),
        revision,
        settings: graphene_core::settings::FunctionSettings::from_deployment(&spec)
            .expect("the suite's settings are valid"),
        spec,
        image_digest: image_digest.to_string(),
        secrets: Vec::new(),
        replicas,
    }
}

/// How the suite reaches a provider.
pub trait Harness {
    type P: Provider;

    fn provider(&self) -> &Self::P;

    /// A deployment of `function` as `revision`, running `image` with
    /// `replicas` replicas, a 3 s timeout, one call at a time per replica
    /// and at most two replicas.
    fn deployment(
        &self,
        function: &FunctionRef,
        revision: u64,
        image: Image,
        replicas: u64,
    ) -> Deployment;
}

/// Polls `check` until it gives a value, failing after `limit`.
pub async fn eventually<T, F: Future<Output = Option<T>>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const WAIT: Duration = Duration::from_secs(60);

async fn call<P: Provider>(p: &P, f: &FunctionRef, body: &str) -> Result<String, ProviderError> {
    let r = p
        .invoke(
            f,
            Invocation {
                method: "POST".into(),
                path: "/".into(),
                body: bytes::Bytes::from(body.to_string()).into(),
                call_id: format!("conformance-{body}"),
                ..Default::default()
            },
        )
        .await?;
    assert_eq!(r.status, 200, "a good call answers 200");
    let body = r.body.collect(1 << 20).await.expect("a readable answer");
    Ok(String::from_utf8_lossy(&body).trim().to_string())
}

async fn rollout<P: Provider>(p: &P, f: &FunctionRef, revision: u64) -> Rollout {
    eventually(
        &format!("revision {revision} of {f} to be ready or failed"),
        WAIT,
        || async {
            let s = p.status(f).await.ok()?;
            s.rollout
                .filter(|r| r.revision == revision && r.state != RolloutState::Progressing)
        },
    )
    .await
}

async fn answers<P: Provider>(p: &P, f: &FunctionRef, expected: &str) {
    eventually(&format!("{f} to answer {expected}"), WAIT, || async {
        (call(p, f, "x").await.ok()? == expected).then_some(())
    })
    .await
}

/// Runs the whole suite; panics with what failed.
pub async fn run<H: Harness>(h: &H) {
    lifecycle(h).await;
    first_revision_broken(h).await;
    error_classes(h).await;
}

/// Deploy, update, failed update, rollback, scale, zero and wake, status,
/// logs, remove.
pub async fn lifecycle<H: Harness>(h: &H) {
    let p = h.provider();
    let f = FunctionRef::new("conformance", "life");
    // Deploy.
    p.apply(h.deployment(&f, 1, Image::A, 1))
        .await
        .expect("deploy");
    let r = rollout(p, &f, 1).await;
    assert_eq!(r.state, RolloutState::Ready, "{r:?}");
    answers(p, &f, "a").await;
    let s = p.status(&f).await.unwrap();
    assert_eq!((s.desired_replicas, s.ready_replicas), (1, 1), "{s:?}");
    assert!(
        s.instances
            .iter()
            .any(|i| i.ready && i.revision == 1 && !i.id.is_empty()),
        "a ready instance of revision 1: {s:?}"
    );
    // Update.
    p.apply(h.deployment(&f, 2, Image::B, 1))
        .await
        .expect("update");
    assert_eq!(rollout(p, &f, 2).await.state, RolloutState::Ready);
    answers(p, &f, "b").await;
    // A failed update: reported, and revision 2 keeps serving meanwhile.
    p.apply(h.deployment(&f, 3, Image::Broken, 1))
        .await
        .expect("a broken image is accepted; its rollout fails");
    let r = rollout(p, &f, 3).await;
    assert_eq!(r.state, RolloutState::Failed, "{r:?}");
    assert!(!r.reason.is_empty(), "a failed rollout says why: {r:?}");
    for _ in 0..3 {
        assert_eq!(call(p, &f, "x").await.expect("still served"), "b");
    }
    // Rollback: the registry makes a new revision of an earlier image.
    p.apply(h.deployment(&f, 4, Image::A, 1))
        .await
        .expect("rollback");
    assert_eq!(rollout(p, &f, 4).await.state, RolloutState::Ready);
    answers(p, &f, "a").await;
    // Scale up, then to zero, then wake.
    p.scale(&f, 2).await.expect("scale up");
    eventually("two ready replicas", WAIT, || async {
        let s = p.status(&f).await.ok()?;
        (s.desired_replicas == 2 && s.ready_replicas == 2).then_some(())
    })
    .await;
    p.scale(&f, 0).await.expect("scale to zero");
    eventually("zero replicas", WAIT, || async {
        let s = p.status(&f).await.ok()?;
        (s.desired_replicas == 0 && s.ready_replicas == 0).then_some(())
    })
    .await;
    match call(p, &f, "x").await {
        Err(ProviderError::Unavailable(_)) => {}
        other => panic!("a call at zero (not woken) is unavailable: {other:?}"),
    }
    p.scale(&f, 1).await.expect("wake");
    answers(p, &f, "a").await;
    // Logs: those kept, and new ones while following.
    let kept: Vec<_> = p
        .logs(
            &f,
            LogQuery {
                tail: None,
                follow: false,
            },
        )
        .await
        .expect("logs")
        .collect()
        .await;
    assert!(!kept.is_empty(), "some lines are kept");
    assert!(kept
        .iter()
        .all(|m| m.name == f.name && m.namespace == f.namespace));
    let mut follow = p
        .logs(
            &f,
            LogQuery {
                tail: Some(1),
                follow: true,
            },
        )
        .await
        .expect("follow");
    assert!(follow.next().await.is_some(), "the last kept line");
    call(p, &f, "followed").await.expect("a logged call");
    let line = tokio::time::timeout(WAIT, async {
        while let Some(m) = follow.next().await {
            if m.text.contains("followed") {
                return Some(m);
            }
        }
        None
    })
    .await
    .expect("a new line while following");
    assert!(line.is_some(), "the call's line arrives while following");
    // Remove.
    p.remove(&f).await.expect("remove");
    assert!(matches!(
        p.status(&f).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        call(p, &f, "x").await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.remove(&f).await,
        Err(ProviderError::NotFound(_))
    ));
}

/// A first revision that fails: nothing serves, calls say why.
pub async fn first_revision_broken<H: Harness>(h: &H) {
    let p = h.provider();
    let f = FunctionRef::new("conformance", "broken");
    p.apply(h.deployment(&f, 1, Image::Broken, 1))
        .await
        .expect("deploy");
    assert_eq!(rollout(p, &f, 1).await.state, RolloutState::Failed);
    match call(p, &f, "x").await {
        Err(ProviderError::Unavailable(m)) => assert!(!m.is_empty()),
        other => panic!("a function that never started is unavailable: {other:?}"),
    }
    // Fixed by a new revision.
    p.apply(h.deployment(&f, 2, Image::B, 1))
        .await
        .expect("fix");
    assert_eq!(rollout(p, &f, 2).await.state, RolloutState::Ready);
    answers(p, &f, "b").await;
    p.remove(&f).await.expect("remove");
}

/// The error classes a caller can cause.
pub async fn error_classes<H: Harness>(h: &H) {
    let p = h.provider();
    let unknown = FunctionRef::new("conformance", "nobody");
    assert!(matches!(
        call(p, &unknown, "x").await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.scale(&unknown, 1).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.status(&unknown).await,
        Err(ProviderError::NotFound(_))
    ));
    assert!(matches!(
        p.logs(&unknown, LogQuery::default()).await,
        Err(ProviderError::NotFound(_))
    ));
    let f = FunctionRef::new("conformance", "errors");
    let missing = h.deployment(&f, 1, Image::Missing, 1);
    assert!(matches!(p.check(&missing), Err(ProviderError::Invalid(_))));
    assert!(matches!(
        p.apply(missing).await,
        Err(ProviderError::Invalid(_))
    ));
    p.apply(h.deployment(&f, 1, Image::A, 1))
        .await
        .expect("deploy");
    answers(p, &f, "a").await;
    let started = Instant::now();
    match call(p, &f, "hang").await {
        Err(ProviderError::Timeout(_)) => {}
        other => panic!("a call past the timeout is a timeout: {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "cut at the timeout"
    );
    answers(p, &f, "a").await;
    match call(p, &f, "crash").await {
        Err(ProviderError::Upstream(_)) => {}
        other => panic!("a replica dying mid-call is an upstream error: {other:?}"),
    }
    answers(p, &f, "a").await;
    // One replica, one call at a time, at its maximum: a second call while
    // one runs is turned away.
    p.apply(h.deployment(&f, 2, Image::A, 2))
        .await
        .expect("update");
    p.scale(&f, 2).await.expect("scale");
    // The update's own replicas, not those of the revision it replaces.
    assert_eq!(rollout(p, &f, 2).await.state, RolloutState::Ready);
    eventually("two ready replicas", WAIT, || async {
        let s = p.status(&f).await.ok()?;
        (s.ready_replicas >= 2).then_some(())
    })
    .await;
    let (a, b, c) = tokio::join!(call(p, &f, "slow"), call(p, &f, "slow"), async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        call(p, &f, "x").await
    });
    assert_eq!(a.expect("first slow call"), "a");
    assert_eq!(b.expect("second slow call"), "a");
    match c {
        Err(ProviderError::Overloaded(_, retry_after)) => assert!(retry_after >= 1),
        other => panic!("a call beyond every replica's capacity is overloaded: {other:?}"),
    }
    p.remove(&f).await.expect("remove");
}

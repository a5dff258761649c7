//! Changes others make to a shared function store (another gateway,
//! `kubectl apply`, a GitOps tool), folded into the registry as they come.
//! A spec declared in the store without a revision of its own is checked
//! as a deploy would be and recorded as a revision by `declared`; one that
//! fails the checks is logged once and left alone (the revision that
//! serves keeps serving).

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::StreamExt;
use graphene_core::api::FunctionDeployment;
use graphene_core::names::FunctionRef;
use graphene_core::provider::Provider;
use graphene_core::settings::FunctionSettings;

use crate::access::Identity;
use crate::registry::Absorbed;
use crate::Gateway;

/// Who a declared revision is recorded as created by.
pub const DECLARED: &str = "declared";

impl<P: Provider> Gateway<P> {
    /// Folds the store's changes into the registry until the gateway goes.
    pub(crate) fn follow_store(self: &Arc<Self>) {
        let Some(mut changes) = self.registry.changes() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // Declared specs refused, so each is reported once.
            let mut refused: HashMap<FunctionRef, FunctionDeployment> = HashMap::new();
            while let Some(change) = changes.next().await {
                let Some(gw) = weak.upgrade() else { return };
                let follows = !gw.leads();
                let changed = match &change {
                    graphene_core::store::StoreChange::Changed(f) => Some(f.id.clone()),
                    graphene_core::store::StoreChange::Removed { .. } => None,
                };
                let absorbed = {
                    let writing = gw.registry.writing().await;
                    gw.registry.absorb(&writing, change, follows)
                };
                // A gateway that follows tells its runtime the leader's
                // replica count (its calls need to know a function at zero).
                if let (true, Some(r)) = (follows, changed.and_then(|id| gw.registry.get(&id))) {
                    r.touch();
                }
                match absorbed {
                    Absorbed::Known => continue,
                    Absorbed::Added(r) => gw.start_reconciler(r),
                    Absorbed::Updated | Absorbed::Removed => {}
                    Absorbed::Declared(spec) => {
                        let id = FunctionRef::new(&spec.namespace, &spec.service);
                        if refused.get(&id) == Some(&*spec) {
                            continue;
                        }
                        match gw.deploy_declared(&id, (*spec).clone()).await {
                            true => refused.remove(&id),
                            false => refused.insert(id, *spec),
                        };
                    }
                }
                // Public functions are part of the access policy.
                if let Err(e) = gw.reload_access() {
                    tracing::warn!(error = %e.message, "could not reload the access policy");
                }
            }
            tracing::warn!("the function store's change stream ended");
        });
    }

    /// Reads tokens and grants again whenever another gateway changes them,
    /// until the gateway goes.
    pub(crate) fn follow_access(self: &Arc<Self>) {
        let Some(mut changes) = self.access.changes() else {
            return;
        };
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while changes.next().await.is_some() {
                let Some(gw) = weak.upgrade() else { return };
                if let Err(e) = gw.refresh_access().await {
                    tracing::warn!(error = %e.message, "could not read tokens and grants again");
                }
            }
            tracing::warn!("the token and grant change stream ended");
        });
    }

    /// Records a spec declared in the store as a revision, after the checks
    /// a deploy gets. Whoever could write the store could deploy: no grant
    /// is asked for. Returns whether it was recorded.
    pub(crate) async fn deploy_declared(
        self: &Arc<Self>,
        id: &FunctionRef,
        spec: FunctionDeployment,
    ) -> bool {
        let who = Identity {
            principal: DECLARED.into(),
            roles: Vec::new(),
            client: None,
        };
        let recorded = match FunctionSettings::from_deployment(&spec) {
            Ok(settings) => self.record_deploy(&who, id, spec, settings, None).await,
            Err(e) => Err(crate::error::ApiError::bad_request(e.to_string())),
        };
        match recorded {
            Ok(revision) => {
                tracing::info!(function = %id, revision, "deployed as declared in the store");
                true
            }
            // Another gateway recorded it first: its write comes in next.
            Err(e) if e.status == axum::http::StatusCode::CONFLICT => {
                tracing::debug!(function = %id, error = %e.message, "another gateway recorded the declared spec first");
                true
            }
            Err(e) => {
                tracing::warn!(function = %id, error = %e.message, "a function declared in the store was refused; what serves keeps serving");
                false
            }
        }
    }
}

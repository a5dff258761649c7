//! The control plane's durable state: deployed functions and their
//! revisions, secrets, credentials, API tokens (as hashes), grants and the
//! audit trail, in one SQLite database in the state directory. Every write
//! is committed before the API answers, so nothing accepted is lost when
//! the server is killed. The registry (`registry.rs`) is the only reader and
//! writer of functions and revisions.

use std::path::Path;
use std::sync::Mutex;

use std::sync::Arc;

use graphene_core::api::RolloutState;
use graphene_core::names::FunctionRef;
use graphene_core::provider::BoxFuture;
use graphene_core::store::{
    AccessChanges, AccessStore, ChangeStream, FunctionStore, SecretStore, StoreError,
    StoredFunction, StoredGrant, StoredRevision, StoredToken, Written,
};
use rusqlite::{params, Connection, OptionalExtension};

pub use graphene_core::api::AuditEntry;

pub struct Store {
    db: Mutex<Connection>,
}

fn state_of(text: &str) -> RolloutState {
    match text {
        "ready" => RolloutState::Ready,
        "failed" => RolloutState::Failed,
        _ => RolloutState::Progressing,
    }
}

type Result<T> = rusqlite::Result<T>;

impl Store {
    pub fn open(path: &Path) -> Result<Self> {
        let db = Connection::open(path)?;
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "FULL")?;
        db.busy_timeout(std::time::Duration::from_secs(5))?;
        db.execute_batch(
            "CREATE TABLE IF NOT EXISTS functions (
                namespace TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
                replicas INTEGER, created_at TEXT NOT NULL,
                PRIMARY KEY (namespace, name));
             CREATE TABLE IF NOT EXISTS revisions (
                namespace TEXT NOT NULL, name TEXT NOT NULL, revision INTEGER NOT NULL,
                spec TEXT NOT NULL, digest TEXT NOT NULL, spec_hash TEXT NOT NULL,
                created_by TEXT NOT NULL, created_at TEXT NOT NULL,
                state TEXT NOT NULL, reason TEXT NOT NULL, rollback_of INTEGER,
                PRIMARY KEY (namespace, name, revision));
             CREATE TABLE IF NOT EXISTS secrets (
                namespace TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
                created_at TEXT NOT NULL,
                PRIMARY KEY (namespace, name));
             CREATE TABLE IF NOT EXISTS credentials (
                name TEXT PRIMARY KEY, hash TEXT NOT NULL, created_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS tokens (
                name TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, owner TEXT NOT NULL,
                created_at TEXT NOT NULL, expires_at INTEGER);
             CREATE TABLE IF NOT EXISTS grants (
                id TEXT PRIMARY KEY, principal TEXT NOT NULL, actions TEXT NOT NULL,
                resource TEXT NOT NULL, rate TEXT, burst INTEGER,
                created_at TEXT NOT NULL, created_by TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS audit (
                id INTEGER PRIMARY KEY AUTOINCREMENT, at TEXT NOT NULL, principal TEXT NOT NULL,
                action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL);",
        )?;
        Ok(Self { db: Mutex::new(db) })
    }

    /// Runs `f` on the connection, on the calling thread. The registry
    /// calls the store from the blocking pool; the security calls (tokens,
    /// grants, audit, secrets) are rare and short and still run where they
    /// are made. Never through
    /// `tokio::task::block_in_place`: that hands the worker thread to the
    /// blocking pool, which ends idle threads after a while, and a function
    /// process started from such a thread dies with it (bubblewrap's
    /// `--die-with-parent` follows the thread that spawned it).
    fn with<T>(&self, f: impl FnOnce(&mut Connection) -> T) -> T {
        f(&mut self.db.lock().expect("store lock"))
    }

    /// Every function with its kept revisions.
    pub fn functions(&self) -> Result<Vec<StoredFunction>> {
        type Row = (String, String, Option<i64>, String);
        let rows = self.with(|db| {
            let mut stmt = db.prepare(
                "SELECT namespace, spec, replicas, created_at FROM functions ORDER BY namespace, name",
            )?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
            rows.collect::<Result<Vec<Row>>>()
        })?;
        rows.into_iter()
            .map(|(namespace, spec, replicas, created_at)| {
                let spec: graphene_core::api::FunctionDeployment =
                    serde_json::from_str(&spec).map_err(|e| conversion(e.to_string()))?;
                let id = FunctionRef::new(&namespace, &spec.service);
                Ok(StoredFunction {
                    revisions: self.revisions(&id)?,
                    id,
                    spec,
                    replicas: replicas.map(|n| n as u64),
                    created_at,
                    version: 0,
                    incarnation: String::new(),
                })
            })
            .collect()
    }

    /// A function's kept revisions, newest first.
    pub fn revisions(&self, f: &FunctionRef) -> Result<Vec<StoredRevision>> {
        self.with(|db| {
            let mut stmt = db.prepare(
                "SELECT revision, spec, digest, spec_hash, created_by, created_at, state, reason, rollback_of
                 FROM revisions WHERE namespace = ?1 AND name = ?2 ORDER BY revision DESC",
            )?;
            let rows = stmt.query_map(params![f.namespace, f.name], |r| {
                let spec: String = r.get(1)?;
                let state: String = r.get(6)?;
                Ok(StoredRevision {
                    revision: r.get::<_, i64>(0)? as u64,
                    spec: serde_json::from_str(&spec).map_err(|e| conversion(e.to_string()))?,
                    digest: r.get(2)?,
                    spec_hash: r.get(3)?,
                    created_by: r.get(4)?,
                    created_at: r.get(5)?,
                    state: state_of(&state),
                    reason: r.get(7)?,
                    rollback_of: r.get::<_, Option<i64>>(8)?.map(|n| n as u64),
                })
            })?;
            rows.collect()
        })
    }

    /// Stores a new revision and makes its spec the function's, creating
    /// the function when new, in one transaction. Returns the creation time.
    pub fn put_revision(&self, f: &FunctionRef, r: &StoredRevision) -> Result<String> {
        self.with(|db| {
            let json = serde_json::to_string(&r.spec).expect("a deployment serialises");
            let tx = db.transaction()?;
            tx.execute(
                "INSERT INTO functions (namespace, name, spec, replicas, created_at) VALUES (?1, ?2, ?3, NULL, ?4)
                 ON CONFLICT (namespace, name) DO UPDATE SET spec = excluded.spec",
                params![f.namespace, f.name, json, r.created_at],
            )?;
            tx.execute(
                "INSERT OR REPLACE INTO revisions (namespace, name, revision, spec, digest, spec_hash,
                    created_by, created_at, state, reason, rollback_of)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    f.namespace,
                    f.name,
                    r.revision as i64,
                    json,
                    r.digest,
                    r.spec_hash,
                    r.created_by,
                    r.created_at,
                    r.state.as_str(),
                    r.reason,
                    r.rollback_of.map(|n| n as i64)
                ],
            )?;
            let created: String = tx.query_row(
                "SELECT created_at FROM functions WHERE namespace = ?1 AND name = ?2",
                params![f.namespace, f.name],
                |row| row.get(0),
            )?;
            tx.commit()?;
            Ok(created)
        })
    }

    pub fn set_rollout(
        &self,
        f: &FunctionRef,
        revision: u64,
        state: RolloutState,
        reason: &str,
    ) -> Result<()> {
        self.with(|db| {
            db.execute(
                "UPDATE revisions SET state = ?4, reason = ?5 WHERE namespace = ?1 AND name = ?2 AND revision = ?3",
                params![f.namespace, f.name, revision as i64, state.as_str(), reason],
            )?;
            Ok(())
        })
    }

    /// Forgets the revisions not in `keep`.
    pub fn prune_revisions(&self, f: &FunctionRef, keep: &[u64]) -> Result<()> {
        self.with(|db| {
            let tx = db.transaction()?;
            let kept: Vec<i64> = keep.iter().map(|n| *n as i64).collect();
            let all: Vec<i64> = {
                let mut stmt = tx
                    .prepare("SELECT revision FROM revisions WHERE namespace = ?1 AND name = ?2")?;
                let rows = stmt.query_map(params![f.namespace, f.name], |r| r.get(0))?;
                rows.collect::<Result<_>>()?
            };
            for n in all.into_iter().filter(|n| !kept.contains(n)) {
                tx.execute(
                    "DELETE FROM revisions WHERE namespace = ?1 AND name = ?2 AND revision = ?3",
                    params![f.namespace, f.name, n],
                )?;
            }
            tx.commit()
        })
    }

    pub fn set_replicas(&self, f: &FunctionRef, replicas: u64) -> Result<()> {
        self.with(|db| {
            db.execute(
                "UPDATE functions SET replicas = ?3 WHERE namespace = ?1 AND name = ?2",
                params![f.namespace, f.name, replicas as i64],
            )?;
            Ok(())
        })
    }

    /// Removes a function with its revisions.
    pub fn delete_function(&self, f: &FunctionRef) -> Result<bool> {
        self.with(|db| {
            let tx = db.transaction()?;
            let n = tx.execute(
                "DELETE FROM functions WHERE namespace = ?1 AND name = ?2",
                params![f.namespace, f.name],
            )?;
            tx.execute(
                "DELETE FROM revisions WHERE namespace = ?1 AND name = ?2",
                params![f.namespace, f.name],
            )?;
            tx.commit()?;
            Ok(n > 0)
        })
    }

    /// Namespaces that hold secrets.
    pub fn secret_namespaces(&self) -> Result<Vec<String>> {
        self.with(|db| {
            let mut stmt = db.prepare("SELECT DISTINCT namespace FROM secrets ORDER BY 1")?;
            let rows = stmt.query_map([], |r| r.get(0))?;
            rows.collect()
        })
    }

    pub fn secret_names(&self, namespace: &str) -> Result<Vec<String>> {
        self.with(|db| {
            let mut stmt =
                db.prepare("SELECT name FROM secrets WHERE namespace = ?1 ORDER BY name")?;
            let rows = stmt.query_map([namespace], |r| r.get(0))?;
            rows.collect()
        })
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.with(|db| {
            db.query_row(
                "SELECT value FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
                |r| r.get(0),
            )
            .optional()
        })
    }

    /// Creates (`replace = false`, failing if it exists) or replaces
    /// (`replace = true`, failing if it does not) a secret. Returns whether
    /// the write happened.
    pub fn put_secret(
        &self,
        namespace: &str,
        name: &str,
        value: &[u8],
        replace: bool,
    ) -> Result<bool> {
        self.with(|db| {
            let n = if replace {
                db.execute(
                    "UPDATE secrets SET value = ?3 WHERE namespace = ?1 AND name = ?2",
                    params![namespace, name, value],
                )?
            } else {
                db.execute(
                    "INSERT OR IGNORE INTO secrets (namespace, name, value, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![namespace, name, value, graphene_core::time::now_rfc3339()],
                )?
            };
            Ok(n > 0)
        })
    }

    pub fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool> {
        self.with(|db| {
            Ok(db.execute(
                "DELETE FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
            )? > 0)
        })
    }

    pub fn credential_hash(&self, name: &str) -> Result<Option<String>> {
        self.with(|db| {
            db.query_row(
                "SELECT hash FROM credentials WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
        })
    }

    pub fn put_credential(&self, name: &str, hash: &str) -> Result<()> {
        self.with(|db| {
            db.execute(
                "INSERT OR REPLACE INTO credentials (name, hash, created_at) VALUES (?1, ?2, ?3)",
                params![name, hash, graphene_core::time::now_rfc3339()],
            )?;
            Ok(())
        })
    }
}

fn audit(db: &Connection, e: &AuditEntry) -> Result<()> {
    db.execute(
        "INSERT INTO audit (at, principal, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![e.at, e.principal, e.action, e.target, e.detail],
    )?;
    Ok(())
}

fn put_grant(db: &Connection, g: &StoredGrant) -> Result<()> {
    db.execute(
        "INSERT INTO grants (id, principal, actions, resource, rate, burst, created_at, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            g.id,
            g.principal,
            g.actions.join(","),
            g.resource,
            g.rate,
            g.burst.map(|b| b as i64),
            g.created_at,
            g.created_by
        ],
    )?;
    Ok(())
}

/// The registry's store on one machine: the functions and revisions
/// tables, written from the blocking pool (every write is fsynced, and
/// none runs on the async runtime's threads). Only this gateway writes it.
pub struct SqliteFunctions(pub Arc<Store>);

/// Secrets on one machine: the secrets table, from the blocking pool.
pub struct SqliteSecrets(pub Arc<Store>);

/// Tokens, grants and the audit trail on one machine, each change in one
/// transaction with its audit line.
pub struct SqliteAccess(pub Arc<Store>);

/// Runs `f` on the state database in the blocking pool; a failure is logged
/// here and answered without its cause.
fn blocking<'a, T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
) -> BoxFuture<'a, std::result::Result<T, StoreError>> {
    let store = store.clone();
    Box::pin(async move {
        tokio::task::spawn_blocking(move || f(&store))
            .await
            .map_err(|e| StoreError::Unavailable(format!("state database: {e}")))?
            .map_err(|e| {
                tracing::error!(error = %e, "state database");
                StoreError::Unavailable(
                    "the state database failed; the server log has the cause".into(),
                )
            })
    })
}

impl SqliteFunctions {
    fn blocking<'a, T: Send + 'static>(
        &self,
        f: impl FnOnce(&Store) -> Result<T> + Send + 'static,
    ) -> BoxFuture<'a, std::result::Result<T, StoreError>> {
        blocking(&self.0, f)
    }
}

impl AccessStore for SqliteAccess {
    fn tokens(&self) -> BoxFuture<'_, std::result::Result<Vec<StoredToken>, StoreError>> {
        blocking(&self.0, |s| s.tokens())
    }

    fn grants(&self) -> BoxFuture<'_, std::result::Result<Vec<StoredGrant>, StoreError>> {
        blocking(&self.0, |s| s.grants())
    }

    fn create_token<'a>(
        &'a self,
        token: &'a StoredToken,
        grants: &'a [StoredGrant],
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, std::result::Result<bool, StoreError>> {
        let (t, g, e) = (token.clone(), grants.to_vec(), entry.clone());
        blocking(&self.0, move |s| s.create_token(&t, &g, &e))
    }

    fn revoke_token<'a>(
        &'a self,
        name: &'a str,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, std::result::Result<bool, StoreError>> {
        let (n, e) = (name.to_string(), entry.clone());
        blocking(&self.0, move |s| s.revoke_token(&n, &e))
    }

    fn add_grant<'a>(
        &'a self,
        grant: &'a StoredGrant,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, std::result::Result<(), StoreError>> {
        let (g, e) = (grant.clone(), entry.clone());
        blocking(&self.0, move |s| s.add_grant(&g, &e))
    }

    fn remove_grant<'a>(
        &'a self,
        id: &'a str,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, std::result::Result<bool, StoreError>> {
        let (id, e) = (id.to_string(), entry.clone());
        blocking(&self.0, move |s| s.remove_grant(&id, &e))
    }

    fn audit<'a>(
        &'a self,
        entry: &'a AuditEntry,
    ) -> BoxFuture<'a, std::result::Result<(), StoreError>> {
        let e = entry.clone();
        blocking(&self.0, move |s| s.audit(&e))
    }

    fn audit_trail(
        &self,
        limit: usize,
    ) -> BoxFuture<'_, std::result::Result<Vec<AuditEntry>, StoreError>> {
        blocking(&self.0, move |s| s.audit_trail(limit))
    }

    fn changes(&self) -> Option<AccessChanges> {
        None
    }
}

impl SecretStore for SqliteSecrets {
    fn namespaces(&self) -> BoxFuture<'_, std::result::Result<Vec<String>, StoreError>> {
        blocking(&self.0, |s| s.secret_namespaces())
    }

    fn names<'a>(
        &'a self,
        namespace: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Vec<String>, StoreError>> {
        let ns = namespace.to_string();
        blocking(&self.0, move |s| s.secret_names(&ns))
    }

    fn get<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, std::result::Result<Option<Vec<u8>>, StoreError>> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        blocking(&self.0, move |s| s.secret(&ns, &name))
    }

    fn put<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
        value: &'a [u8],
        replace: bool,
    ) -> BoxFuture<'a, std::result::Result<bool, StoreError>> {
        let (ns, name, value) = (namespace.to_string(), name.to_string(), value.to_vec());
        blocking(&self.0, move |s| s.put_secret(&ns, &name, &value, replace))
    }

    fn delete<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> BoxFuture<'a, std::result::Result<bool, StoreError>> {
        let (ns, name) = (namespace.to_string(), name.to_string());
        blocking(&self.0, move |s| s.delete_secret(&ns, &name))
    }
}

impl FunctionStore for SqliteFunctions {
    fn load(&self) -> BoxFuture<'_, std::result::Result<Vec<StoredFunction>, StoreError>> {
        self.blocking(|s| s.functions())
    }

    /// Versions are not kept: this gateway is the only writer.
    fn put_revision<'a>(
        &'a self,
        function: &'a FunctionRef,
        _version: u64,
        revision: &'a StoredRevision,
    ) -> BoxFuture<'a, std::result::Result<Written, StoreError>> {
        let (f, r) = (function.clone(), revision.clone());
        self.blocking(move |s| {
            Ok(Written {
                created_at: s.put_revision(&f, &r)?,
                version: 0,
                incarnation: String::new(),
            })
        })
    }

    fn set_rollout<'a>(
        &'a self,
        function: &'a FunctionRef,
        _version: u64,
        revision: u64,
        state: RolloutState,
        reason: &'a str,
    ) -> BoxFuture<'a, std::result::Result<u64, StoreError>> {
        let (f, why) = (function.clone(), reason.to_string());
        self.blocking(move |s| s.set_rollout(&f, revision, state, &why).map(|()| 0))
    }

    fn prune<'a>(
        &'a self,
        function: &'a FunctionRef,
        _version: u64,
        keep: &'a [u64],
    ) -> BoxFuture<'a, std::result::Result<u64, StoreError>> {
        let (f, keep) = (function.clone(), keep.to_vec());
        self.blocking(move |s| s.prune_revisions(&f, &keep).map(|()| 0))
    }

    fn set_replicas<'a>(
        &'a self,
        function: &'a FunctionRef,
        replicas: u64,
    ) -> BoxFuture<'a, std::result::Result<(), StoreError>> {
        let f = function.clone();
        self.blocking(move |s| s.set_replicas(&f, replicas))
    }

    fn remove<'a>(
        &'a self,
        function: &'a FunctionRef,
    ) -> BoxFuture<'a, std::result::Result<bool, StoreError>> {
        let f = function.clone();
        self.blocking(move |s| s.delete_function(&f))
    }

    fn changes(&self) -> Option<ChangeStream> {
        None
    }
}

fn conversion(e: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
}

impl Store {
    /// Appends to the audit trail.
    pub fn audit(&self, e: &AuditEntry) -> Result<()> {
        self.with(|db| audit(db, e))
    }

    /// The newest entries first.
    pub fn audit_trail(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        self.with(|db| {
            let mut stmt = db.prepare(
                "SELECT at, principal, action, target, detail FROM audit ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |r| {
                Ok(AuditEntry {
                    at: r.get(0)?,
                    principal: r.get(1)?,
                    action: r.get(2)?,
                    target: r.get(3)?,
                    detail: r.get(4)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Stores a token's hash with its grants and the audit line, at once.
    /// False when a token of that name exists.
    pub fn create_token(
        &self,
        t: &StoredToken,
        grants: &[StoredGrant],
        entry: &AuditEntry,
    ) -> Result<bool> {
        self.with(|db| {
            let tx = db.transaction()?;
            let n = tx.execute(
                "INSERT OR IGNORE INTO tokens (name, hash, owner, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![t.name, t.hash, t.owner, t.created_at, t.expires_at.map(|e| e as i64)],
            )?;
            if n == 0 {
                return Ok(false);
            }
            for g in grants {
                put_grant(&tx, g)?;
            }
            audit(&tx, entry)?;
            tx.commit()?;
            Ok(true)
        })
    }

    /// Removes a token and the grants made to it. False if there was none.
    pub fn revoke_token(&self, name: &str, entry: &AuditEntry) -> Result<bool> {
        self.with(|db| {
            let tx = db.transaction()?;
            if tx.execute("DELETE FROM tokens WHERE name = ?1", [name])? == 0 {
                return Ok(false);
            }
            tx.execute(
                "DELETE FROM grants WHERE principal = ?1",
                [format!("token:{name}")],
            )?;
            audit(&tx, entry)?;
            tx.commit()?;
            Ok(true)
        })
    }

    pub fn tokens(&self) -> Result<Vec<StoredToken>> {
        self.with(|db| {
            let mut stmt = db.prepare(
                "SELECT hash, name, owner, created_at, expires_at FROM tokens ORDER BY name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(StoredToken {
                    hash: r.get(0)?,
                    name: r.get(1)?,
                    owner: r.get(2)?,
                    created_at: r.get(3)?,
                    expires_at: r.get::<_, Option<i64>>(4)?.map(|e| e as u64),
                })
            })?;
            rows.collect()
        })
    }

    pub fn add_grant(&self, g: &StoredGrant, entry: &AuditEntry) -> Result<()> {
        self.with(|db| {
            let tx = db.transaction()?;
            put_grant(&tx, g)?;
            audit(&tx, entry)?;
            tx.commit()
        })
    }

    pub fn remove_grant(&self, id: &str, entry: &AuditEntry) -> Result<bool> {
        self.with(|db| {
            let tx = db.transaction()?;
            if tx.execute("DELETE FROM grants WHERE id = ?1", [id])? == 0 {
                return Ok(false);
            }
            audit(&tx, entry)?;
            tx.commit()?;
            Ok(true)
        })
    }

    pub fn grants(&self) -> Result<Vec<StoredGrant>> {
        self.with(|db| {
            let mut stmt = db.prepare(
                "SELECT id, principal, actions, resource, rate, burst, created_at, created_by
                 FROM grants ORDER BY created_at, id",
            )?;
            let rows = stmt.query_map([], |r| {
                let actions: String = r.get(2)?;
                Ok(StoredGrant {
                    id: r.get(0)?,
                    principal: r.get(1)?,
                    actions: actions.split(',').map(str::to_string).collect(),
                    resource: r.get(3)?,
                    rate: r.get(4)?,
                    burst: r.get::<_, Option<i64>>(5)?.map(|b| b as u64),
                    created_at: r.get(6)?,
                    created_by: r.get(7)?,
                })
            })?;
            rows.collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use graphene_core::api::FunctionDeployment;

    #[test]
    fn functions_revisions_and_secrets_persist() {
        let dir = std::env::temp_dir().join(format!("graphene-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        let f = FunctionRef::new("openfaas-fn", "echo");
        let revision = |n: u64| StoredRevision {
            revision: n,
            spec: FunctionDeployment {
                service: "echo".into(),
                image: format!("echo:v{n}"),
                ..Default::default()
            },
            digest: format!("d{n}"),
            spec_hash: format!("h{n}"),
            created_by: "admin".into(),
            created_at: "2026-01-01T00:00:00Z".into(),
            state: RolloutState::Progressing,
            reason: String::new(),
            rollback_of: None,
        };
        {
            let s = Store::open(&path).unwrap();
            for n in 1..=3 {
                s.put_revision(&f, &revision(n)).unwrap();
            }
            s.set_rollout(&f, 2, RolloutState::Failed, "boom").unwrap();
            s.prune_revisions(&f, &[2, 3]).unwrap();
            s.set_replicas(&f, 3).unwrap();
            assert!(s.put_secret("openfaas-fn", "key", b"v1", false).unwrap());
            assert!(
                !s.put_secret("openfaas-fn", "key", b"v2", false).unwrap(),
                "create must not overwrite"
            );
            assert!(
                !s.put_secret("openfaas-fn", "nope", b"v", true).unwrap(),
                "update needs an existing secret"
            );
        }
        let s = Store::open(&path).unwrap();
        let stored = s.functions().unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(stored[0].replicas, Some(3));
        assert_eq!(
            stored[0].spec.image, "echo:v3",
            "the newest revision's spec"
        );
        let revisions = s.revisions(&f).unwrap();
        assert_eq!(
            revisions.iter().map(|r| r.revision).collect::<Vec<_>>(),
            [3, 2]
        );
        assert_eq!(
            (revisions[1].state, revisions[1].reason.as_str()),
            (RolloutState::Failed, "boom")
        );
        assert_eq!(s.secret("openfaas-fn", "key").unwrap().unwrap(), b"v1");
        assert_eq!(s.secret_namespaces().unwrap(), ["openfaas-fn"]);
        assert!(s.delete_function(&f).unwrap());
        assert!(!s.delete_function(&f).unwrap());
        assert!(s.revisions(&f).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

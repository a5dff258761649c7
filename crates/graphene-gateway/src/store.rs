//! The control plane's durable state: deployed functions, secrets,
//! credentials, API tokens (as hashes), grants and the audit trail, in one
//! SQLite database in the state directory. Every write is
//! committed before the API answers, so nothing accepted is lost when the
//! server is killed.

use std::path::Path;
use std::sync::Mutex;

use graphene_core::api::FunctionDeployment;
use rusqlite::{params, Connection, OptionalExtension};

use crate::access::{Action, Grant, Rate, Resource, TokenRecord};
pub use graphene_core::api::AuditEntry;

pub struct Store {
    db: Mutex<Connection>,
}

#[derive(Debug, Clone)]
pub struct StoredFunction {
    pub namespace: String,
    pub spec: FunctionDeployment,
    pub replicas: Option<u64>,
    pub created_at: String,
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

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.db.lock().expect("store lock")
    }

    pub fn functions(&self, namespace: Option<&str>) -> Result<Vec<StoredFunction>> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT namespace, spec, replicas, created_at FROM functions
             WHERE ?1 IS NULL OR namespace = ?1 ORDER BY namespace, name",
        )?;
        let rows = stmt.query_map(params![namespace], |r| {
            let spec: String = r.get(1)?;
            Ok(StoredFunction {
                namespace: r.get(0)?,
                spec: serde_json::from_str(&spec).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        1,
                        rusqlite::types::Type::Text,
                        Box::new(e),
                    )
                })?,
                replicas: r.get::<_, Option<i64>>(2)?.map(|n| n as u64),
                created_at: r.get(3)?,
            })
        })?;
        rows.collect()
    }

    pub fn function(&self, namespace: &str, name: &str) -> Result<Option<StoredFunction>> {
        Ok(self
            .functions(Some(namespace))?
            .into_iter()
            .find(|f| f.spec.service == name))
    }

    /// Inserts or replaces a function's spec, keeping its creation time and
    /// replica count.
    pub fn put_function(&self, namespace: &str, spec: &FunctionDeployment) -> Result<()> {
        let json = serde_json::to_string(spec).expect("a deployment serialises");
        self.db().execute(
            "INSERT INTO functions (namespace, name, spec, replicas, created_at) VALUES (?1, ?2, ?3, NULL, ?4)
             ON CONFLICT (namespace, name) DO UPDATE SET spec = excluded.spec",
            params![namespace, spec.service, json, graphene_core::time::now_rfc3339()],
        )?;
        Ok(())
    }

    pub fn set_replicas(&self, namespace: &str, name: &str, replicas: u64) -> Result<()> {
        self.db().execute(
            "UPDATE functions SET replicas = ?3 WHERE namespace = ?1 AND name = ?2",
            params![namespace, name, replicas as i64],
        )?;
        Ok(())
    }

    pub fn delete_function(&self, namespace: &str, name: &str) -> Result<bool> {
        Ok(self.db().execute(
            "DELETE FROM functions WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )? > 0)
    }

    pub fn namespaces(&self) -> Result<Vec<String>> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT namespace FROM functions UNION SELECT namespace FROM secrets ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        rows.collect()
    }

    pub fn secret_names(&self, namespace: &str) -> Result<Vec<String>> {
        let db = self.db();
        let mut stmt = db.prepare("SELECT name FROM secrets WHERE namespace = ?1 ORDER BY name")?;
        let rows = stmt.query_map([namespace], |r| r.get(0))?;
        rows.collect()
    }

    pub fn secret(&self, namespace: &str, name: &str) -> Result<Option<Vec<u8>>> {
        self.db()
            .query_row(
                "SELECT value FROM secrets WHERE namespace = ?1 AND name = ?2",
                params![namespace, name],
                |r| r.get(0),
            )
            .optional()
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
        let db = self.db();
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
    }

    pub fn delete_secret(&self, namespace: &str, name: &str) -> Result<bool> {
        Ok(self.db().execute(
            "DELETE FROM secrets WHERE namespace = ?1 AND name = ?2",
            params![namespace, name],
        )? > 0)
    }

    pub fn credential_hash(&self, name: &str) -> Result<Option<String>> {
        self.db()
            .query_row(
                "SELECT hash FROM credentials WHERE name = ?1",
                [name],
                |r| r.get(0),
            )
            .optional()
    }

    pub fn put_credential(&self, name: &str, hash: &str) -> Result<()> {
        self.db().execute(
            "INSERT OR REPLACE INTO credentials (name, hash, created_at) VALUES (?1, ?2, ?3)",
            params![name, hash, graphene_core::time::now_rfc3339()],
        )?;
        Ok(())
    }
}

fn audit(db: &Connection, e: &AuditEntry) -> Result<()> {
    db.execute(
        "INSERT INTO audit (at, principal, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![e.at, e.principal, e.action, e.target, e.detail],
    )?;
    Ok(())
}

fn put_grant(db: &Connection, g: &Grant) -> Result<()> {
    let actions: Vec<&str> = g.actions.iter().map(|a| a.name()).collect();
    db.execute(
        "INSERT INTO grants (id, principal, actions, resource, rate, burst, created_at, created_by)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            g.id,
            g.principal,
            actions.join(","),
            g.resource.to_string(),
            g.rate.map(|r| r.to_string()),
            g.rate.map(|r| r.burst as i64),
            g.created_at,
            g.created_by
        ],
    )?;
    Ok(())
}

fn conversion(e: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, e.into())
}

impl Store {
    /// Appends to the audit trail.
    pub fn audit(&self, e: &AuditEntry) -> Result<()> {
        audit(&self.db(), e)
    }

    /// The newest entries first.
    pub fn audit_trail(&self, limit: usize) -> Result<Vec<AuditEntry>> {
        let db = self.db();
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
    }

    /// Stores a token's hash with its grants and the audit line, at once.
    /// False when a token of that name exists.
    pub fn create_token(
        &self,
        t: &TokenRecord,
        hash: &str,
        grants: &[Grant],
        entry: &AuditEntry,
    ) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction()?;
        let n = tx.execute(
            "INSERT OR IGNORE INTO tokens (name, hash, owner, created_at, expires_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![t.name, hash, t.owner, t.created_at, t.expires_at.map(|e| e as i64)],
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
    }

    /// Removes a token and the grants made to it. False if there was none.
    pub fn revoke_token(&self, name: &str, entry: &AuditEntry) -> Result<bool> {
        let mut db = self.db();
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
    }

    /// Every token by hash.
    pub fn tokens(&self) -> Result<Vec<(String, TokenRecord)>> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT hash, name, owner, created_at, expires_at FROM tokens ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                TokenRecord {
                    name: r.get(1)?,
                    owner: r.get(2)?,
                    created_at: r.get(3)?,
                    expires_at: r.get::<_, Option<i64>>(4)?.map(|e| e as u64),
                },
            ))
        })?;
        rows.collect()
    }

    pub fn add_grant(&self, g: &Grant, entry: &AuditEntry) -> Result<()> {
        let mut db = self.db();
        let tx = db.transaction()?;
        put_grant(&tx, g)?;
        audit(&tx, entry)?;
        tx.commit()
    }

    pub fn remove_grant(&self, id: &str, entry: &AuditEntry) -> Result<bool> {
        let mut db = self.db();
        let tx = db.transaction()?;
        if tx.execute("DELETE FROM grants WHERE id = ?1", [id])? == 0 {
            return Ok(false);
        }
        audit(&tx, entry)?;
        tx.commit()?;
        Ok(true)
    }

    pub fn grants(&self) -> Result<Vec<Grant>> {
        let db = self.db();
        let mut stmt = db.prepare(
            "SELECT id, principal, actions, resource, rate, burst, created_at, created_by
             FROM grants ORDER BY created_at, id",
        )?;
        let rows = stmt.query_map([], |r| {
            let actions: String = r.get(2)?;
            let resource: String = r.get(3)?;
            let rate: Option<String> = r.get(4)?;
            let burst: Option<i64> = r.get(5)?;
            Ok(Grant {
                id: r.get(0)?,
                principal: r.get(1)?,
                actions: actions
                    .split(',')
                    .map(Action::parse)
                    .collect::<std::result::Result<_, _>>()
                    .map_err(conversion)?,
                resource: Resource::parse(&resource).map_err(conversion)?,
                rate: rate
                    .map(|r| Rate::parse(&r, burst.map(|b| b as u64)))
                    .transpose()
                    .map_err(conversion)?,
                created_at: r.get(6)?,
                created_by: r.get(7)?,
            })
        })?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_and_secrets_persist() {
        let dir = std::env::temp_dir().join(format!("graphene-store-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.db");
        {
            let s = Store::open(&path).unwrap();
            let spec = FunctionDeployment {
                service: "echo".into(),
                image: "echo:latest".into(),
                ..Default::default()
            };
            s.put_function("openfaas-fn", &spec).unwrap();
            s.set_replicas("openfaas-fn", "echo", 3).unwrap();
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
        let f = s.function("openfaas-fn", "echo").unwrap().unwrap();
        assert_eq!(f.replicas, Some(3));
        assert_eq!(s.secret("openfaas-fn", "key").unwrap().unwrap(), b"v1");
        assert_eq!(s.namespaces().unwrap(), ["openfaas-fn"]);
        assert!(s.delete_function("openfaas-fn", "echo").unwrap());
        assert!(!s.delete_function("openfaas-fn", "echo").unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! The PostgreSQL log's schema, its migrations (`rxtrack migrate`), and
//! verifying every chain in the table (`rxtrack log verify --postgres`).

use tokio_postgres::NoTls;

use super::store::StoreError;
use super::{Location, Verifier, VerifyReport};

/// A database error as the log reports it (its SQLSTATE and message).
pub(super) fn db(e: &tokio_postgres::Error) -> StoreError {
    StoreError::Database(e.as_db_error().map_or_else(
        || e.to_string(),
        |d| format!("{}: {}", d.code().code(), d.message()),
    ))
}

/// The schema, one migration per entry, applied in order by `rxtrack migrate`.
pub(super) const MIGRATIONS: &[&str] = &[r"
CREATE TABLE delivery_events (
    tenant      text   NOT NULL,
    seq         bigint NOT NULL CHECK (seq > 0),
    delivery_id text,
    at          bigint NOT NULL,
    prev        text   NOT NULL,
    hash        text   NOT NULL,
    line        text   NOT NULL,
    PRIMARY KEY (tenant, seq)
);
CREATE INDEX delivery_events_by_delivery
    ON delivery_events (tenant, delivery_id, seq) WHERE delivery_id IS NOT NULL;
ALTER TABLE delivery_events ENABLE ROW LEVEL SECURITY;
CREATE POLICY delivery_events_tenant ON delivery_events
    USING (tenant = current_setting('rxtrack.tenant', true))
    WITH CHECK (tenant = current_setting('rxtrack.tenant', true));
"];

/// Creates or upgrades the schema (as the table's owner), and lets `grant`
/// (the role the servers connect as) insert and read, nothing more.
/// Returns the schema version now in place.
pub async fn migrate(url: &str, grant: Option<&str>) -> Result<usize, StoreError> {
    let (mut client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| db(&e))?;
    let driver = tokio::spawn(conn);
    let tx = client.transaction().await.map_err(|e| db(&e))?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS rxtrack_schema (version integer PRIMARY KEY, \
         applied_at timestamptz NOT NULL DEFAULT now()); \
         LOCK TABLE rxtrack_schema IN EXCLUSIVE MODE;",
    )
    .await
    .map_err(|e| db(&e))?;
    let row = tx
        .query_one("SELECT coalesce(max(version), 0) FROM rxtrack_schema", &[])
        .await
        .map_err(|e| db(&e))?;
    let have = usize::try_from(row.get::<_, i32>(0)).unwrap_or(0);
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have) {
        tx.batch_execute(sql).await.map_err(|e| db(&e))?;
        let version = i32::try_from(i + 1).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO rxtrack_schema (version) VALUES ($1)",
            &[&version],
        )
        .await
        .map_err(|e| db(&e))?;
    }
    if let Some(role) = grant {
        let ok = !role.is_empty() && role.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !ok {
            return Err(StoreError::Database(format!(
                "role {role:?}: letters, digits and _ only"
            )));
        }
        tx.batch_execute(&format!(
            "REVOKE ALL ON delivery_events FROM {role}; \
             GRANT SELECT, INSERT ON delivery_events TO {role};"
        ))
        .await
        .map_err(|e| db(&e))?;
    }
    tx.commit().await.map_err(|e| db(&e))?;
    drop(client);
    let _ = driver.await;
    Ok(MIGRATIONS.len())
}

/// Verifies every tenant's chain in the table (as a role that sees every
/// row, such as the table's owner).
pub async fn verify_all(url: &str) -> Result<VerifyReport, StoreError> {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .map_err(|e| db(&e))?;
    let driver = tokio::spawn(conn);
    let rows = client
        .query("SELECT line FROM delivery_events ORDER BY tenant, seq", &[])
        .await
        .map_err(|e| db(&e))?;
    drop(client);
    let _ = driver.await;
    Ok(verify_lines(rows.iter().map(|r| r.get::<_, &str>(0)), None))
}

pub(super) fn verify_lines<'a>(
    lines: impl Iterator<Item = &'a str>,
    only: Option<&str>,
) -> VerifyReport {
    let mut v = Verifier::new(only);
    for (i, line) in lines.enumerate() {
        let loc = Location {
            segment: 0,
            offset: i as u64,
            len: 0,
        };
        if !v.line(line.as_bytes(), loc) {
            break;
        }
    }
    v.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_keeps_rows_per_tenant_and_append_only() {
        let sql = MIGRATIONS.concat();
        assert!(sql.contains("PRIMARY KEY (tenant, seq)"));
        assert!(sql.contains("ENABLE ROW LEVEL SECURITY"));
        assert!(!sql.to_ascii_uppercase().contains("UPDATE"));
    }
}

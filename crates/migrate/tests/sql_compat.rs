//! The SQL interface only grows: every call that version 1 answered when it was released
//! (`crates/migrate/tests/data/sql_api_1.txt`) still resolves to a function, with the same argument types, on
//! a database migrated by this release — so workers, clients and `lineq` processes of that
//! release keep working while a fleet is upgraded one process at a time.

use lineq_testkit::*;

#[tokio::test]
async fn every_call_of_version_1_still_resolves() {
    let db = TestDb::new().await;
    let version: i32 = sqlx::query_scalar("SELECT lineq.api_version()")
        .fetch_one(&db.pool)
        .await
        .expect("api_version");
    assert_eq!(version, 1, "a new version needs its own list of calls");
    let listed = include_str!("data/sql_api_1.txt");
    let mut checked = 0;
    for line in listed
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (name, args) = line
            .strip_suffix(')')
            .and_then(|l| l.split_once('('))
            .unwrap_or_else(|| panic!("not a signature: {line}"));
        // PREPARE resolves the call (parse analysis) and runs and plans nothing.
        let types: Vec<&str> = args.split(',').filter(|a| !a.is_empty()).collect();
        let params: Vec<String> = (1..=types.len()).map(|i| format!("${i}")).collect();
        let typed = if types.is_empty() {
            String::new()
        } else {
            format!("({})", types.join(", "))
        };
        let sql = format!(
            "PREPARE compat{typed} AS SELECT {name}({}); DEALLOCATE compat",
            params.join(", ")
        );
        if let Err(e) = sqlx::raw_sql(&sql).execute(&db.pool).await {
            panic!("{line} no longer resolves: {e}");
        }
        checked += 1;
    }
    assert!(checked >= 35, "only {checked} calls listed");
    db.drop_db().await;
}

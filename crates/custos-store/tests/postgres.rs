//! The conformance suite against PostgreSQL (a `harness = false` test, so that what it says is
//! never swallowed by the test runner's output capture).
//!
//! `CUSTOS_TEST_DATABASE_URL` (libpq key=value form) names the server; CI sets it and then this
//! suite fails if the server can't be reached. Without it, the suite tries the local default
//! (`host=127.0.0.1 port=5432 user=postgres dbname=test`) and, if nothing answers there, prints
//! one line saying it did not run. Each check runs in a schema of its own, dropped afterwards.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "a test fails loudly on a broken fixture; that is its job"
)]

mod conformance;

use std::panic::{AssertUnwindSafe, catch_unwind};

use custos_core::Policy;
use custos_store::{Location, Store, StoreError};

const DEFAULT: &str = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3";

fn main() {
    let required = std::env::var("CUSTOS_TEST_DATABASE_URL").ok();
    let base = required.clone().unwrap_or_else(|| DEFAULT.to_owned());
    let admin = match postgres::Client::connect(&base, postgres::NoTls) {
        Ok(client) => client,
        Err(error) if required.is_none() => {
            println!(
                "custos-store: the PostgreSQL conformance suite did NOT run: no server at `{DEFAULT}` ({error}); \
                 set CUSTOS_TEST_DATABASE_URL to require it"
            );
            return;
        }
        Err(error) => {
            eprintln!(
                "custos-store: CUSTOS_TEST_DATABASE_URL is set but PostgreSQL can't be reached: {error}"
            );
            std::process::exit(1);
        }
    };
    let admin = std::cell::RefCell::new(admin);
    let data = tempfile::tempdir().unwrap();
    let (mut passed, mut failed) = (0, 0);
    let mut record = |name: &str, ok: bool| {
        if ok {
            passed += 1;
            println!("test postgres::{name} ... ok");
        } else {
            failed += 1;
            println!("test postgres::{name} ... FAILED");
        }
    };
    for (index, (name, run)) in conformance::CHECKS.iter().enumerate() {
        let counter = std::cell::Cell::new(0);
        let schemas = std::cell::RefCell::new(Vec::new());
        let open = || {
            counter.set(counter.get() + 1);
            let schema = format!(
                "custos_test_{}_{index}_{}",
                std::process::id(),
                counter.get()
            );
            admin
                .borrow_mut()
                .batch_execute(&format!("CREATE SCHEMA {schema}"))
                .unwrap();
            schemas.borrow_mut().push(schema.clone());
            let url = format!("{base} options='-c search_path={schema}'");
            Store::open(
                &Location::Postgres {
                    url,
                    data: data.path().to_owned(),
                },
                Policy::bundled(),
            )
            .unwrap()
        };
        // The factory borrows `admin`; run the check, then drop what it made.
        let outcome = catch_unwind(AssertUnwindSafe(|| run(&open)));

        for schema in schemas.take() {
            admin
                .borrow_mut()
                .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
                .unwrap();
        }
        record(name, outcome.is_ok());
    }
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        newer_schema_is_refused(&mut admin.borrow_mut(), &base)
    }));
    record("a_database_from_a_newer_custos_is_refused", outcome.is_ok());
    println!("\npostgres: {passed} passed, {failed} failed");
    if failed > 0 {
        std::process::exit(1);
    }
}

/// Marks a schema as written by a future custos, then opens it again.
fn newer_schema_is_refused(client: &mut postgres::Client, base: &str) {
    let schema = format!("custos_test_newer_{}", std::process::id());
    client
        .batch_execute(&format!(
            "DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}"
        ))
        .unwrap();
    let url = format!("{base} options='-c search_path={schema}'");
    let data = tempfile::tempdir().unwrap();
    let location = Location::Postgres {
        url,
        data: data.path().to_owned(),
    };
    drop(Store::open(&location, Policy::bundled()).unwrap());
    client
        .batch_execute(&format!("UPDATE {schema}.custos_schema SET version = 99"))
        .unwrap();
    let error = Store::open(&location, Policy::bundled()).unwrap_err();
    client
        .batch_execute(&format!("DROP SCHEMA {schema} CASCADE"))
        .unwrap();
    assert!(
        matches!(error, StoreError::SchemaTooNew { found: 99, .. }),
        "{error}"
    );
}

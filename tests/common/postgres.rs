//! A real PostgreSQL for the license server's replica tests (scripts/postgres.sh starts
//! one on loopback; LEASEHOLD_TEST_POSTGRES names it): a fresh database per test.

/// The test server's admin URL; `None` (the test skips) only when
/// LEASEHOLD_REQUIRE_ALL is unset.
pub fn postgres_url() -> Option<String> {
    match std::env::var("LEASEHOLD_TEST_POSTGRES") {
        Ok(url) => Some(url),
        Err(_) => {
            assert!(
                std::env::var_os("LEASEHOLD_REQUIRE_ALL").is_none(),
                "LEASEHOLD_TEST_POSTGRES must be set when LEASEHOLD_REQUIRE_ALL is (scripts/test.sh)"
            );
            eprintln!(
                "LEASEHOLD_TEST_POSTGRES not set: run scripts/test.sh for the PostgreSQL test"
            );
            None
        }
    }
}

/// A fresh database on the test server; dropped at the end.
pub struct TempDatabase {
    admin_url: String,
    name: String,
}

impl TempDatabase {
    pub fn create(admin_url: &str) -> TempDatabase {
        let name = format!("leasehold_test_{}_{}", std::process::id(), rand_suffix());
        admin_sql(admin_url, format!("CREATE DATABASE {name}")).unwrap();
        TempDatabase {
            admin_url: admin_url.to_string(),
            name,
        }
    }

    pub fn url(&self) -> String {
        let base = self.admin_url.rsplit_once('/').unwrap().0;
        format!("{base}/{}", self.name)
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let _ = admin_sql(
            &self.admin_url,
            format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

/// Run one statement on its own thread (the sync client must not run inside tokio).
fn admin_sql(url: &str, statement: String) -> Result<(), postgres::Error> {
    let url = url.to_string();
    std::thread::spawn(move || {
        postgres::Client::connect(&url, postgres::NoTls)?.batch_execute(&statement)
    })
    .join()
    .unwrap()
}

fn rand_suffix() -> String {
    hex::encode(leasehold::crypto::random::bytes::<4>())
}

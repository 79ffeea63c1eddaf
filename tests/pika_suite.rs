//! Runs the pika suite (`tests/python`, pytest) against the `warren`
//! binary Cargo built for this test run, so `cargo test` runs every test.
//! A missing python3, pika or pytest fails this test: it is never skipped.
//! The TLS tests' certificates are made here (rcgen) and passed in
//! WARREN_TEST_TLS_DIR.

#[path = "common/certs.rs"]
#[allow(dead_code)]
mod certs;

use std::process::Command;

#[test]
fn pika_suite_passes() {
    let root = env!("CARGO_MANIFEST_DIR");
    // Removed when the test ends. CN: the user test_tls.py creates.
    let tls = certs::Certs::generate("tls-user");
    let status = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            // The Celery worker pools run in their own session
            // (tests/worker_pool_suite.rs).
            "--ignore=tests/python/workers",
            "tests/python",
        ])
        .env("WARREN_BIN", env!("CARGO_BIN_EXE_warren"))
        .env("WARREN_TEST_TLS_DIR", tls.dir())
        // Never let an outside broker stand in for the one under test.
        .env_remove("WARREN_TEST_AMQP_URL")
        .current_dir(root)
        .status()
        .expect(
            "python3 must be installed (see README: the test command installs pika and pytest)",
        );
    assert!(status.success(), "the pika suite failed: {status}");
}

//! Runs the worker-pool suite (`tests/python/workers`, pytest with real
//! `celery worker` prefork processes over pyamqp://) against the `warren`
//! binary Cargo built for this test run. A missing python3, pytest or
//! celery fails this test: it is never skipped (tests/setup.sh installs
//! them). Its own pytest session, so its own broker, apart from the pika
//! suite's.

use std::process::Command;

#[test]
fn worker_pool_suite_passes() {
    let root = env!("CARGO_MANIFEST_DIR");
    let status = Command::new("python3")
        .args([
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests/python/workers",
        ])
        .env("WARREN_BIN", env!("CARGO_BIN_EXE_warren"))
        // Worker start-up and redelivery after a kill take longer than the
        // pika suite's 20 s per phase on a busy machine.
        .env("WARREN_TEST_TIMEOUT", "120")
        // Never let an outside broker stand in for the one under test.
        .env_remove("WARREN_TEST_AMQP_URL")
        .current_dir(root)
        .status()
        .expect(
            "python3 must be installed (see README: the test command installs celery, pika and pytest)",
        );
    assert!(status.success(), "the worker-pool suite failed: {status}");
}

//! Chaos (issue 12, "Proof, all in CI"): the scenario of `dth_tests::chaos` at CI sizes.
//! - a fleet of three workers of which a random one is SIGKILLed and restarted every 2–6 s (seeded), copying
//!   2,400 small objects, 6 multipart objects and 2 giants split across the fleet;
//! - the same kind of transfer, smaller, with every AWS call of the finder and the workers through the fault
//!   proxy failing 5 % of the time (500s, throttling, truncated answers, resets mid-body) and 10 % delayed.
//!
//! Each ends with every object byte-identical at the destination, no open upload, the run's counts exact,
//! both queues empty and the transfer `in_sync`; a failure prints every finding with its diagnosis, and keeps the
//! world's logs under target/e2e.

use dth_tests::chaos::{run, Plan};

/// One scenario at a time: each wants the machine's two cores to itself, and its timings to mean something.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_killed_at_random_copies_everything_exactly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let figures = run(Plan::chaos("chaos-kill", 12)).await;
    eprintln!("{}", figures.table());
    assert!(figures.kills > 0, "no worker was killed");
    assert!(figures.problems.is_empty(), "{}", figures.table());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_behind_a_faulty_network_copies_everything_exactly() {
    let _one = ONE_AT_A_TIME.lock().await;
    let figures = run(Plan::faults("chaos-faults", 12)).await;
    eprintln!("{}", figures.table());
    for svc in ["s3", "sqs", "dynamodb"] {
        assert!(
            figures
                .calls
                .get(svc)
                .is_some_and(|&(_, injected)| injected > 0),
            "no fault injected into {svc}: {:?}",
            figures.calls
        );
    }
    assert!(figures.problems.is_empty(), "{}", figures.table());
}

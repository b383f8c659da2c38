//! The launch templates' user data, executed: the script runs as root in a throwaway instance root
//! (`dth_tests::instance`) with recording stand-ins for docker, systemctl, sysctl, dnf, curl (IMDSv2) and the
//! AWS CLI. The checks are on what a real instance would be left with: the job config, the sysctl settings,
//! the systemd units and the commands they run — and those commands are run too (the pull with its ECR login,
//! the failure units), split the way systemd splits them.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use dth_core::config::TransferConfig;
use dth_core::userdata::{self, LaunchSpec, Role, CONFIG_PATH, UNIT_DIR};
use dth_core::JobConfig;
use dth_tests::instance::{Instance, ECR_PASSWORD, INSTANCE_ID};
use dth_tests::systemd::{self, Unit};

const IMAGE: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/dth@sha256:\
                     0a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f9";
const ECR_HOST: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com";

fn spec(role: Role) -> LaunchSpec {
    let config = JobConfig::from_json(
        r#"{"source":{"bucket":"src","prefix":"it's/a b"},"destination":{"bucket":"dst"},
            "queue":{"url":"https://sqs.eu-west-1.amazonaws.com/123456789012/dth-x-jobs"},
            "ledger":{"table":"dth-x-ledger"},"worker":{"shutdown_grace_secs":120}}"#,
    )
    .unwrap();
    let (group, args) = match role {
        Role::Worker => ("dth-x-workers", vec!["--concurrency".into(), "6".into()]),
        Role::Finder => (
            "dth-x-finder",
            vec!["--scale-in-asg".into(), "dth-x-finder".into()],
        ),
    };
    LaunchSpec {
        role,
        config: config.into(),
        args,
        image: IMAGE.into(),
        group: group.into(),
        region: "eu-west-1".into(),
        log_group: Some("/dth/x".into()),
    }
}

/// Run the user data of `spec` in a new instance; returns the instance and the installed role unit.
fn boot(dir: &std::path::Path, spec: &LaunchSpec, without: &[&str]) -> (Instance, Unit) {
    let instance = Instance::new(dir, without).unwrap();
    std::fs::create_dir_all(instance.path("/var/lib/cloud")).unwrap();
    std::fs::write(
        instance.path("/var/lib/cloud/user-data"),
        userdata::render(spec),
    )
    .unwrap();
    let out = instance
        .run(&["/bin/bash", "/var/lib/cloud/user-data"], &BTreeMap::new())
        .unwrap();
    assert!(
        out.status.success(),
        "user data failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let unit_path = instance.path(&format!("{UNIT_DIR}/{}", spec.role.unit()));
    let unit = Unit::parse(&std::fs::read_to_string(&unit_path).unwrap()).unwrap();
    (instance, unit)
}

/// Run one `Exec*=` line of a unit inside the instance, with the unit's environment file.
fn run_exec(instance: &Instance, line: &str) -> std::process::Output {
    let env = systemd::environment_file(
        &std::fs::read_to_string(instance.path("/etc/dth/instance.env")).unwrap(),
    );
    let exec = systemd::exec(line, &env).unwrap();
    let argv: Vec<&str> = exec.argv.iter().map(String::as_str).collect();
    instance.run(&argv, &BTreeMap::new()).unwrap()
}

fn docker_run_argv(instance: &Instance, unit: &Unit) -> Vec<String> {
    let env = systemd::environment_file(
        &std::fs::read_to_string(instance.path("/etc/dth/instance.env")).unwrap(),
    );
    systemd::exec(unit.get("Service", "ExecStart").unwrap(), &env)
        .unwrap()
        .argv
}

/// The value after `flag` in `argv`, for every occurrence.
fn flag_values<'a>(argv: &'a [String], flag: &str) -> Vec<&'a str> {
    argv.windows(2)
        .filter(|w| w[0] == flag)
        .map(|w| w[1].as_str())
        .collect()
}

#[test]
fn worker_user_data_installs_a_unit_that_restarts_stops_gracefully_and_pulls_by_digest_after_an_ecr_login(
) {
    let dir = tempfile_dir("worker");
    let spec = spec(Role::Worker);
    let (instance, unit) = boot(&dir, &spec, &[]);

    // The job config, for the image's user only, exactly what the provider rendered.
    let config_path = instance.path(CONFIG_PATH);
    let meta = std::fs::metadata(&config_path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o400);
    assert_eq!((meta.uid(), meta.gid()), (65532, 65532));
    let written =
        TransferConfig::from_json(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    assert_eq!(written, spec.config);

    // BBR with fair queueing, applied now and on every boot.
    let sysctl = std::fs::read_to_string(instance.path("/etc/sysctl.d/90-dth.conf")).unwrap();
    assert!(
        sysctl.contains("net.ipv4.tcp_congestion_control = bbr"),
        "{sysctl}"
    );
    assert!(sysctl.contains("net.core.default_qdisc = fq"), "{sysctl}");
    assert_eq!(
        instance.calls_to("sysctl"),
        [["-p", "/etc/sysctl.d/90-dth.conf"]]
    );

    // Docker was there: nothing installed; the unit enabled and started after a daemon-reload.
    assert!(instance.calls_to("dnf").is_empty());
    assert_eq!(
        instance.calls_to("systemctl"),
        [
            vec!["enable", "--now", "docker"],
            vec!["daemon-reload"],
            vec!["enable", "--now", "dth-worker.service"],
        ]
    );
    // IMDSv2: a token first, then the instance id with it.
    let curl = instance.calls_to("curl");
    assert_eq!(curl.len(), 2, "{curl:?}");
    assert!(curl[0].contains(&"PUT".to_owned()), "{curl:?}");
    assert_eq!(
        std::fs::read_to_string(instance.path("/etc/dth/instance.env")).unwrap(),
        format!("DTH_INSTANCE_ID={INSTANCE_ID}\n")
    );

    // The unit: always restarted with backoff, replaced when it cannot stay up, stopped with room to
    // release jobs after the grace period.
    assert_eq!(unit.get("Service", "Restart"), Some("always"));
    assert!(unit.seconds("Service", "RestartSec").unwrap() >= 5);
    assert_eq!(unit.get("Unit", "OnFailure"), Some("dth-unhealthy.service"));
    assert!(unit.get("Unit", "StartLimitBurst").is_some());
    assert_eq!(unit.get("Unit", "Requires"), Some("docker.service"));
    let grace = spec.config.worker().shutdown_grace_secs;
    let stop = systemd::exec(unit.get("Service", "ExecStop").unwrap(), &BTreeMap::new()).unwrap();
    assert_eq!(stop.argv[..3], ["docker", "stop", "--time"]);
    let docker_stop: u64 = stop.argv[3].parse().unwrap();
    assert!(
        docker_stop > grace,
        "docker stop -t {docker_stop} ≤ grace {grace}"
    );
    let unit_stop = unit.seconds("Service", "TimeoutStopSec").unwrap();
    assert!(
        unit_stop > docker_stop,
        "TimeoutStopSec {unit_stop} ≤ docker stop {docker_stop}"
    );

    // What runs: the image pinned by digest, as the image's user, the config read-only, logs to the
    // transfer's log group in a stream of this instance, and the worker's arguments.
    let argv = docker_run_argv(&instance, &unit);
    assert_eq!(argv[..2], ["docker", "run"]);
    let image_at = argv
        .iter()
        .position(|a| a == IMAGE)
        .expect("image by digest");
    assert_eq!(
        argv[image_at + 1..],
        [
            "worker",
            "--config",
            CONFIG_PATH,
            "--log-format",
            "json",
            "--concurrency",
            "6"
        ]
    );
    let options = &argv[..image_at];
    assert_eq!(flag_values(options, "--user"), ["65532:65532"]);
    assert_eq!(
        flag_values(options, "--stop-timeout"),
        [docker_stop.to_string()]
    );
    assert_eq!(
        flag_values(options, "--volume"),
        [format!("{CONFIG_PATH}:{CONFIG_PATH}:ro")]
    );
    assert_eq!(flag_values(options, "--log-driver"), ["awslogs"]);
    assert_eq!(
        flag_values(options, "--log-opt"),
        [
            "awslogs-region=eu-west-1".to_owned(),
            "awslogs-group=/dth/x".to_owned(),
            format!("awslogs-stream={INSTANCE_ID}/worker"),
        ]
    );
    assert!(
        flag_values(options, "--env").contains(&format!("DTH_INSTANCE_ID={INSTANCE_ID}").as_str())
    );
    assert!(flag_values(options, "--env").contains(&"DTH_AUTO_SCALING_GROUP=dth-x-workers"));

    // ExecStartPre: the pull logs in to ECR with the instance role and pulls by digest; a second start
    // finds the image and does neither.
    let pre = unit.all("Service", "ExecStartPre");
    assert_eq!(pre[0], "/usr/local/libexec/dth/pull");
    let out = run_exec(&instance, pre[0]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        instance.calls_to("aws"),
        [["ecr", "get-login-password", "--region", "eu-west-1"]]
    );
    let docker = instance.calls_to("docker");
    assert_eq!(
        docker,
        [
            vec!["image", "inspect", IMAGE],
            vec!["login", "--username", "AWS", "--password-stdin", ECR_HOST],
            vec!["pull", IMAGE],
        ]
    );
    assert_eq!(
        std::fs::read_to_string(instance.path("/var/log/docker-login.stdin")).unwrap(),
        format!("{ECR_PASSWORD}\n")
    );
    let out = run_exec(&instance, pre[0]);
    assert!(out.status.success());
    assert_eq!(
        instance.calls_to("docker").len(),
        docker.len() + 1,
        "only an inspect"
    );

    // A worker that cannot stay up: its instance is marked unhealthy so the group replaces it.
    let unhealthy = Unit::parse(
        &std::fs::read_to_string(instance.path(&format!("{UNIT_DIR}/dth-unhealthy.service")))
            .unwrap(),
    )
    .unwrap();
    let out = run_exec(&instance, unhealthy.get("Service", "ExecStart").unwrap());
    assert!(out.status.success());
    assert_eq!(
        instance.calls_to("aws").last().unwrap(),
        &[
            "autoscaling",
            "set-instance-health",
            "--region",
            "eu-west-1",
            "--instance-id",
            INSTANCE_ID,
            "--health-status",
            "Unhealthy",
            "--no-should-respect-grace-period"
        ]
    );
}

#[test]
fn finder_user_data_runs_once_and_a_failed_run_sets_its_group_back_to_zero() {
    let dir = tempfile_dir("finder");
    let spec = spec(Role::Finder);
    let (instance, unit) = boot(&dir, &spec, &[]);
    assert_eq!(unit.get("Service", "Restart"), Some("no"));
    assert_eq!(
        unit.get("Unit", "OnFailure"),
        Some("dth-finder-failed.service")
    );
    let argv = docker_run_argv(&instance, &unit);
    assert_eq!(
        argv[argv.len() - 7..],
        [
            "finder",
            "--config",
            CONFIG_PATH,
            "--log-format",
            "json",
            "--scale-in-asg",
            "dth-x-finder"
        ]
    );
    let failed = Unit::parse(
        &std::fs::read_to_string(instance.path(&format!("{UNIT_DIR}/dth-finder-failed.service")))
            .unwrap(),
    )
    .unwrap();
    let out = run_exec(&instance, failed.get("Service", "ExecStart").unwrap());
    assert!(out.status.success());
    assert_eq!(
        instance.calls_to("aws"),
        [[
            "autoscaling",
            "set-desired-capacity",
            "--region",
            "eu-west-1",
            "--auto-scaling-group-name",
            "dth-x-finder",
            "--desired-capacity",
            "0",
            "--no-honor-cooldown"
        ]]
    );
}

#[test]
fn an_ami_without_docker_gets_it_from_dnf_and_an_image_outside_ecr_needs_no_login() {
    let dir = tempfile_dir("nodocker");
    let mut spec = spec(Role::Worker);
    spec.image = "registry.example.com/dth/dth:0.1.0".into();
    spec.log_group = None;
    let (instance, unit) = boot(&dir, &spec, &["docker"]);
    assert_eq!(instance.calls_to("dnf"), [["install", "-y", "docker"]]);
    let argv = docker_run_argv(&instance, &unit);
    assert!(flag_values(&argv, "--log-driver").is_empty(), "{argv:?}");
    let pull = std::fs::read_to_string(instance.path("/usr/local/libexec/dth/pull")).unwrap();
    assert!(!pull.contains("ecr"), "{pull}");
}

/// A fresh directory under target/ (kept after a failure for a look; replaced by the next run).
fn tempfile_dir(name: &str) -> std::path::PathBuf {
    let dir = dth_tests::repo_root()
        .join("target/test-instances")
        .join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

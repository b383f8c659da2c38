//! The EC2 stand-in boots instances for Auto Scaling groups built by hand in moto — launch templates whose
//! user data is `userdata::render` of a LaunchSpec, as the provider writes them, naming the project's image
//! in a private registry — and follows the groups: scheduled finder runs, capacity changes, lifecycle hooks,
//! new template versions, units that cannot start, crashed containers.
//!
//! Instances of t4g groups run the image's arm64 binaries under qemu; t3 groups run its amd64 ones.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag};
use aws_sdk_ec2::types::{InstanceType, RequestLaunchTemplateData};
use base64::Engine;
use dth_core::userdata::{self, LaunchSpec, Role, CONFIG_PATH};
use dth_core::JobConfig;
use dth_tests::ec2::{fire_schedule, logs, Ec2StandIn, Launch};
use dth_tests::*;
use serde_json::json;

const TAG: &str = "dth:transfer";

fn user_data(role: Role, config: &JobConfig, args: &[&str], image: &str, group: &str) -> String {
    let text = userdata::render(&LaunchSpec {
        role,
        config: config.clone().into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        image: image.into(),
        group: group.into(),
        region: REGION.into(),
        log_group: None,
    });
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn template_data(user_data: String, instance_type: InstanceType) -> RequestLaunchTemplateData {
    RequestLaunchTemplateData::builder()
        .image_id("ami-12c6146b")
        .instance_type(instance_type)
        .user_data(user_data)
        .build()
}

async fn template(w: &World, name: &str, user_data: String, instance_type: InstanceType) {
    w.ec2
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(template_data(user_data, instance_type))
        .send()
        .await
        .unwrap();
}

fn lt(name: &str, version: &str) -> LaunchTemplateSpecification {
    LaunchTemplateSpecification::builder()
        .launch_template_name(name)
        .version(version)
        .build()
}

async fn group(w: &World, name: &str, template: &str, desired: i32, max: i32, tagged: bool) {
    let mut req = w
        .autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(name)
        .launch_template(lt(template, "$Latest"))
        .min_size(0)
        .max_size(max)
        .desired_capacity(desired)
        .availability_zones(format!("{REGION}a"));
    if tagged {
        req = req.tags(
            Tag::builder()
                .key(TAG)
                .value("t1")
                .resource_id(name)
                .resource_type("auto-scaling-group")
                .propagate_at_launch(true)
                .build(),
        );
    }
    req.send().await.unwrap();
}

async fn desired(w: &World, name: &str) -> i32 {
    w.autoscaling
        .describe_auto_scaling_groups()
        .auto_scaling_group_names(name)
        .send()
        .await
        .unwrap()
        .auto_scaling_groups()[0]
        .desired_capacity()
        .unwrap()
}

async fn set_desired(w: &World, name: &str, n: i32) {
    w.autoscaling
        .set_desired_capacity()
        .auto_scaling_group_name(name)
        .desired_capacity(n)
        .send()
        .await
        .unwrap();
}

/// Every expected object is at the destination, byte for byte.
async fn copied(w: &World, expected: &BTreeMap<String, Vec<u8>>) -> bool {
    for (k, body) in expected {
        match w.get("dst-bucket", k).await {
            Some(got) if md5_hex(&got) == md5_hex(body) => {}
            _ => return false,
        }
    }
    true
}

/// Host PIDs of the processes whose root directory is `root` or below it.
fn processes_under(root: &Path) -> Vec<u32> {
    let Ok(root) = std::fs::canonicalize(root) else {
        return vec![];
    };
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_link(format!("/proc/{p}/root")).is_ok_and(|r| r.starts_with(&root))
        })
        .collect()
}

/// The container of `role` on an instance: its host PID, once running.
fn container(l: &Launch, role: Role) -> Option<u32> {
    let root = l.log.with_extension("root").join(format!(
        "var/lib/docker/containers/dth-{}/root",
        role.binary()
    ));
    let root = std::fs::canonicalize(root).ok()?;
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .find(|p| std::fs::read_link(format!("/proc/{p}/root")).is_ok_and(|r| r == root))
}

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// `Uid:` of /proc/PID/status: real, effective, saved, filesystem.
fn uids(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|u| u.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

struct Setup {
    w: World,
    _registry: dth_tests::registry::Registry,
    image: String,
    s: Ec2StandIn,
    q: Queues,
}

/// A world, its registry holding the project's image, a queue and ledger, and the stand-in.
async fn setup(name: &str, visibility: u32) -> Setup {
    let w = World::start(name).await;
    let (registry, image) = w.image_registry();
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 3, visibility).await;
    w.table("ledger").await;
    let s = w.standin();
    Setup {
        w,
        _registry: registry,
        image,
        s,
        q,
    }
}

impl Setup {
    /// A job config whose Auto Scaling calls go to the stand-in (lifecycle actions, scale-in).
    fn config(&self, patch: serde_json::Value) -> JobConfig {
        let mut v = self
            .w
            .config_json("src-bucket", "dst-bucket", &self.q, "ledger", patch);
        merge(
            &mut v,
            json!({"aws": {"endpoints": {"autoscaling": self.s.autoscaling_endpoint()}}}),
        );
        JobConfig::from_json(&v.to_string()).unwrap()
    }
}

/// A transfer as the provider lays it out, on t4g instances: the schedule fires the finder group, whose
/// instance runs the image's arm64 finder, which enqueues and scales its group back to 0; the worker
/// group's instances copy; scaling the workers to 0 stops their units as systemd would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_finder_and_worker_group_copy_a_bucket_on_arm64() {
    let t0 = Instant::now();
    let st = setup("ec2-run", 60).await;
    let (w, s) = (&st.w, &st.s);
    let mut expected = BTreeMap::new();
    for (i, k) in ["a.txt", "b/c d.bin", "b/e", "ünï/f", "g/h/i", "zero", "j"]
        .iter()
        .enumerate()
    {
        let body = if *k == "zero" {
            vec![]
        } else {
            random_bytes(500 + i * 4000)
        };
        w.put("src-bucket", k, &body).await;
        expected.insert(k.to_string(), body);
    }
    let big = random_bytes(6 * 1024 * 1024 + 3);
    w.put("src-bucket", "big.bin", &big).await;
    expected.insert("big.bin".into(), big);
    let cfg = st.config(json!({"batch": {"max_objects": 3},
           "multipart": {"threshold": 5 * 1024 * 1024, "chunk_size": 5 * 1024 * 1024},
           "worker": {"heartbeat_secs": 5, "visibility_secs": 60, "shutdown_grace_secs": 5}}));
    let (wg, fg) = ("dth-t1-worker", "dth-t1-finder");
    template(
        w,
        wg,
        user_data(Role::Worker, &cfg, &["--concurrency", "2"], &st.image, wg),
        InstanceType::T4gMicro,
    )
    .await;
    template(
        w,
        fg,
        user_data(Role::Finder, &cfg, &["--scale-in-asg", fg], &st.image, fg),
        InstanceType::T4gMicro,
    )
    .await;
    group(w, wg, wg, 2, 4, true).await;
    group(w, fg, fg, 0, 1, true).await;
    // Not a transfer's group: the stand-in leaves it alone.
    group(w, "someone-else", wg, 1, 1, false).await;
    w.autoscaling
        .put_scheduled_update_group_action()
        .auto_scaling_group_name(fg)
        .scheduled_action_name("run")
        .recurrence("0 2 * * *")
        .min_size(0)
        .max_size(1)
        .desired_capacity(1)
        .send()
        .await
        .unwrap();
    let setup = t0.elapsed();

    wait_for!(
        Duration::from_secs(180),
        format!("two worker containers\n{}", logs(&s.launches())),
        s.running(wg).len() == 2
            && s.running(wg)
                .iter()
                .all(|l| container(l, Role::Worker).is_some())
    );
    let t_boot = t0.elapsed() - setup;
    assert!(s.launches_of(fg).is_empty());

    let fired = fire_schedule(&w.autoscaling, fg, None).await.unwrap();
    assert_eq!((fired.action.as_str(), fired.desired), ("run", Some(1)));
    let t_fired = Instant::now();
    wait_for!(
        Duration::from_secs(240),
        format!(
            "the finder to run and its instance to terminate\n{}",
            logs(&s.launches())
        ),
        s.launches_of(fg).first().is_some_and(|l| !l.running()) && desired(w, fg).await == 0
    );
    let finder = s.launches_of(fg).remove(0);
    let console = finder.console();
    assert!(
        console.contains("set the finder's Auto Scaling group to 0"),
        "{console}"
    );
    assert!(
        console.contains("aarch64-unknown-linux-musl"),
        "the finder is the image's arm64 binary\n{console}"
    );
    assert!(!console.contains("dth-finder-failed"), "{console}");
    let t_finder = t_fired.elapsed();

    wait_for!(
        Duration::from_secs(300),
        format!("the copy\n{}", logs(&s.launches())),
        copied(w, &expected).await
    );
    let t_copy = t_fired.elapsed();
    assert_eq!(w.keys("dst-bucket").await.len(), expected.len());
    wait_for!(
        Duration::from_secs(60),
        "the queue to drain",
        w.depth(&st.q.url).await == (0, 0)
    );
    assert_eq!(w.depth(&st.q.dlq_url).await, (0, 0));
    assert_eq!(s.launches_of(fg).len(), 1);
    let workers = s.launches_of(wg);
    assert_eq!(workers.len(), 2, "{}", logs(&workers));
    assert!(workers.iter().all(Launch::running), "{}", logs(&workers));
    assert!(s.launches_of("someone-else").is_empty());
    // Each worker is the image's arm64 binary, under qemu, as the image's user, with the user data's config
    // (owner-only, the image user's) and the template's arguments.
    for l in &workers {
        assert_eq!(l.arch, "arm64");
        let pid = container(l, Role::Worker).expect("a worker container");
        let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
        assert!(
            exe.to_string_lossy().ends_with("qemu-aarch64-static"),
            "{exe:?}"
        );
        assert_eq!(uids(pid), [65532; 4]);
        let argv = cmdline(pid);
        assert_eq!(
            argv[1..],
            [
                "/usr/local/bin/worker",
                "--config",
                CONFIG_PATH,
                "--log-format",
                "json",
                "--concurrency",
                "2"
            ],
            "{argv:?}"
        );
        let config = l.log.with_extension("root").join("etc/dth/job.json");
        let meta = std::fs::metadata(&config).unwrap();
        assert_eq!((meta.mode() & 0o777, meta.uid()), (0o400, 65532));
        assert_eq!(
            JobConfig::load(Some(config.as_ref()), None).unwrap(),
            cfg.clone()
        );
        assert!(
            l.console().contains("aarch64-unknown-linux-musl"),
            "{}",
            l.console()
        );
    }

    let t_scale = Instant::now();
    set_desired(w, wg, 0).await;
    wait_for!(
        Duration::from_secs(180),
        format!("the workers to stop\n{}", logs(&workers)),
        s.running(wg).is_empty()
    );
    for l in s.launches_of(wg) {
        let console = l.console();
        // Stopped the way the unit says: `docker stop --time`, the worker exiting on its SIGTERM.
        assert!(console.contains("stopped dth-worker.service"), "{console}");
        assert!(!console.contains("SIGKILL"), "{console}");
    }
    // Nothing of any instance is left running.
    assert!(processes_under(&w.dir.join("ec2")).is_empty());
    let t_stop = t_scale.elapsed();
    eprintln!(
        "timings: setup {setup:.1?}; two arm64 workers up {t_boot:.1?}; schedule fired → finder done \
         {t_finder:.1?}, → copy done {t_copy:.1?}; workers to 0 → off {t_stop:.1?}; total {:.1?}",
        t0.elapsed()
    );
}

/// Scale-in with the worker group's termination lifecycle hook: the instance taken out of service while it
/// copies a large object stops taking jobs, releases the one in hand, completes the lifecycle action and
/// only then goes; its replacement finishes the object.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_in_waits_for_the_worker_to_release_its_job() {
    let st = setup("ec2-drain", 60).await;
    let (w, s) = (&st.w, &st.s);
    let big = random_bytes(48 * 1024 * 1024 + 5);
    w.put("src-bucket", "big.bin", &big).await;
    // Read at 2 MB/s, the copy takes far longer than the worker's 3 s of grace.
    let slow = slow_proxy(&w.endpoint, 2_000_000).await;
    let cfg = st.config(json!({
        "source": {"endpoint": slow},
        "multipart": {"threshold": 8 * 1024 * 1024, "chunk_size": 8 * 1024 * 1024},
        "worker": {"heartbeat_secs": 5, "visibility_secs": 60, "shutdown_grace_secs": 3,
                   "part_concurrency": 1}}));
    let g = "dth-t5-worker";
    let hook = "dth-t5-drain";
    template(
        w,
        g,
        user_data(
            Role::Worker,
            &cfg,
            &["--concurrency", "1", "--lifecycle-hook", hook],
            &st.image,
            g,
        ),
        InstanceType::T4gMicro,
    )
    .await;
    group(w, g, g, 1, 2, true).await;
    let heartbeat = 600;
    w.autoscaling
        .put_lifecycle_hook()
        .auto_scaling_group_name(g)
        .lifecycle_hook_name(hook)
        .lifecycle_transition("autoscaling:EC2_INSTANCE_TERMINATING")
        .heartbeat_timeout(heartbeat)
        .default_result("CONTINUE")
        .send()
        .await
        .unwrap();
    let path = w.dir.join("drain.json");
    std::fs::write(&path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    let out = w.run("finder", &path, &[]);
    assert!(
        stdout(&out).contains("enqueued 1 objects"),
        "{}",
        stderr(&out)
    );

    // The object's job is in flight: a worker has taken it.
    wait_for!(
        Duration::from_secs(240),
        format!("the job to be taken\n{}", logs(&s.launches())),
        w.depth(&st.q.url).await == (0, 1)
    );
    let busy = s.launches_of(g).remove(0);
    // Scale-in picks the busy instance; the group keeps its size, so a replacement comes.
    let (asg, _) = dth_tests::ec2::clients(
        s.autoscaling_endpoint(),
        REGION,
        Some(("test".into(), "test".into(), None)),
    )
    .await;
    let picked = Instant::now();
    asg.terminate_instance_in_auto_scaling_group()
        .instance_id(&busy.instance_id)
        .should_decrement_desired_capacity(false)
        .send()
        .await
        .unwrap();
    wait_for!(
        Duration::from_secs(240),
        format!("the busy instance to go\n{}", logs(&s.launches())),
        !s.launches_of(g)[0].running()
    );
    let gone = picked.elapsed();
    assert!(
        gone < Duration::from_secs(heartbeat as u64 / 2),
        "the instance went after {gone:?}: it waited for the hook's timeout, not for the worker"
    );
    let console = busy.console();
    let picked_at = console
        .find("scale-in picked this instance")
        .unwrap_or_else(|| panic!("{console}"));
    let released_at = console
        .find("releasing unfinished jobs")
        .unwrap_or_else(|| panic!("no release\n{console}"));
    let completed_at = console
        .find("completed the termination lifecycle action")
        .unwrap_or_else(|| panic!("{console}"));
    assert!(
        picked_at < released_at && released_at < completed_at,
        "{console}"
    );
    assert!(!console.contains("SIGKILL"), "{console}");

    wait_for!(
        Duration::from_secs(400),
        format!(
            "the replacement to finish the object\n{}",
            logs(&s.launches())
        ),
        w.get("dst-bucket", "big.bin")
            .await
            .is_some_and(|b| md5_hex(&b) == md5_hex(&big))
    );
    let launches = s.launches_of(g);
    assert_eq!(launches.len(), 2, "{}", logs(&launches));
    assert!(launches[1].running());
    assert_eq!(w.incomplete_uploads("dst-bucket").await, 0);
    assert_eq!(w.depth(&st.q.dlq_url).await, (0, 0));
    // A lifecycle action that is not pending is refused as AWS refuses it.
    let err = asg
        .complete_lifecycle_action()
        .auto_scaling_group_name(g)
        .lifecycle_hook_name(hook)
        .instance_id(&launches[1].instance_id)
        .lifecycle_action_result("CONTINUE")
        .send()
        .await
        .unwrap_err();
    assert!(
        format!("{:?}", err).contains("No active Lifecycle Action"),
        "{err:?}"
    );
}

/// Instances follow what their units say: a worker that cannot start (its arguments are refused) is
/// restarted by systemd until the start limit, then marks its instance unhealthy and the group replaces
/// it; a new template version replaces the instances once its own are in service; a crashed container is
/// restarted on the same instance; stopping the stand-in leaves no process behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn units_restart_fail_and_roll() {
    let t0 = Instant::now();
    let st = setup("ec2-roll", 60).await;
    let (w, s) = (&st.w, &st.s);
    let cfg = st.config(json!({}));
    let g = "dth-t2-worker";
    template(
        w,
        g,
        user_data(Role::Worker, &cfg, &["--no-such-flag"], &st.image, g),
        InstanceType::T3Micro,
    )
    .await;
    group(w, g, g, 1, 2, true).await;

    // The worker exits 2 at every start: 5 starts, then OnFailure marks the instance unhealthy.
    wait_for!(
        Duration::from_secs(240),
        format!("the unhealthy instance replaced\n{}", logs(&s.launches())),
        s.launches_of(g).len() >= 2 && !s.launches_of(g)[0].running()
    );
    let first = s.launches_of(g).remove(0);
    let console = first.console();
    assert!(
        console.contains("start request repeated too quickly"),
        "{console}"
    );
    assert!(
        console.contains("dth-worker.service failed: starting dth-unhealthy.service"),
        "{console}"
    );
    let t_unhealthy = t0.elapsed();

    // Version 2's arguments are good: it replaces version 1 once in service.
    w.ec2
        .create_launch_template_version()
        .launch_template_name(g)
        .source_version("1")
        .launch_template_data(template_data(
            user_data(Role::Worker, &cfg, &["--concurrency", "3"], &st.image, g),
            InstanceType::T3Micro,
        ))
        .send()
        .await
        .unwrap();
    wait_for!(
        Duration::from_secs(180),
        format!("version 2 to replace version 1\n{}", logs(&s.launches())),
        {
            let r = s.running(g);
            r.len() == 1 && r[0].template_version == 2 && container(&r[0], Role::Worker).is_some()
        }
    );
    let v2 = s.running(g).remove(0);
    assert_eq!(v2.arch, "amd64");
    let pid = container(&v2, Role::Worker).unwrap();
    let argv = cmdline(pid);
    assert_eq!(argv[0], "/usr/local/bin/worker", "amd64: no emulator");
    assert!(
        argv.ends_with(&["--concurrency".into(), "3".into()]),
        "{argv:?}"
    );
    assert!(
        v2.console().contains("x86_64-unknown-linux-musl"),
        "{}",
        v2.console()
    );

    // The container dies: systemd restarts it on the same instance (RestartSec=10).
    let launched = s.launches_of(g).len();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    let killed = Instant::now();
    wait_for!(
        Duration::from_secs(60),
        format!("the container restarted\n{}", v2.console()),
        container(&v2, Role::Worker).is_some_and(|p| p != pid)
    );
    let restart = killed.elapsed();
    assert!(
        restart >= Duration::from_secs(9),
        "restarted after {restart:?}"
    );
    assert_eq!(s.launches_of(g).len(), launched, "{}", logs(&s.launches()));
    assert!(v2.running());

    // Stopping the stand-in powers everything off.
    let all = s.launches();
    let dir = w.dir.join("ec2");
    st.s.stop();
    for l in &all {
        assert!(
            !l.log.with_extension("root").exists(),
            "{}-{}",
            l.group,
            l.n
        );
    }
    assert!(processes_under(&dir).is_empty());
    eprintln!(
        "timings: unhealthy replaced {t_unhealthy:.1?}; container restarted after {restart:.1?}; total {:.1?}",
        t0.elapsed()
    );
}

/// The `ec2-standin` binary: `fire-schedule` applies an action; `run` plays the group, powers its
/// instances off on SIGTERM, and its instances die with it even when it is SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_fires_schedules_and_its_instances_die_with_it() {
    let w = World::start("ec2-bin").await;
    let (_registry, image) = w.image_registry();
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 3, 60).await;
    w.table("ledger").await;
    let cfg = JobConfig::from_json(
        &w.config_json("src-bucket", "dst-bucket", &q, "ledger", json!({}))
            .to_string(),
    )
    .unwrap();
    let g = "dth-t3-worker";
    template(
        &w,
        g,
        user_data(Role::Worker, &cfg, &[], &image, g),
        InstanceType::T3Micro,
    )
    .await;
    group(&w, g, g, 0, 4, true).await;
    for (name, recurrence, n) in [("other", "0 3 * * *", 1), ("scale-out", "0 2 * * *", 2)] {
        w.autoscaling
            .put_scheduled_update_group_action()
            .auto_scaling_group_name(g)
            .scheduled_action_name(name)
            .recurrence(recurrence)
            .desired_capacity(n)
            .send()
            .await
            .unwrap();
    }

    let standin = |args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_ec2-standin"));
        c.args(args)
            .args(["--endpoint", &w.endpoint, "--region", REGION])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env_remove("AWS_CA_BUNDLE")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("AWS_PROFILE");
        c
    };
    let out = standin(&["fire-schedule", "--asg", g, "--action", "scale-out"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("fired scale-out"), "{}", stdout(&out));
    assert_eq!(desired(&w, g).await, 2);

    let run = |dir: &PathBuf| {
        let log = std::fs::File::create(w.dir.join(format!("standin-{}.log", fastrand::u32(..))))
            .unwrap();
        Proc(
            standin(&["run"])
                .arg("--log-dir")
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };
    let running_workers = |dir: &Path| {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".root"))
                    .filter(|e| {
                        processes_under(&e.path().join("var/lib/docker/containers/dth-worker/root"))
                            .len()
                            == 1
                    })
                    .count()
            })
            .unwrap_or(0)
    };

    // SIGKILLed: the kernel takes its instances down with it.
    let first_dir = w.dir.join("ec2-first");
    let mut first = run(&first_dir);
    wait_for!(
        Duration::from_secs(120),
        "two workers under the first stand-in",
        running_workers(&first_dir) == 2
    );
    assert!(!processes_under(&first_dir).is_empty());
    first.kill().unwrap();
    first.wait().unwrap();
    wait_for!(
        Duration::from_secs(10),
        "the instances to die with the stand-in",
        processes_under(&first_dir).is_empty()
    );

    // SIGTERMed: it powers its instances off and exits 0.
    let second_dir = w.dir.join("ec2-second");
    let mut second = run(&second_dir);
    wait_for!(
        Duration::from_secs(120),
        "two workers under the second stand-in",
        running_workers(&second_dir) == 2
    );
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(second.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = wait(&mut second, Duration::from_secs(180));
    assert!(status.success(), "{status}");
    assert!(processes_under(&second_dir).is_empty());
}

/// `finder --scale-in-asg`: a dry run leaves the group alone; a group that cannot be scaled in fails the
/// run with exit code 1 after the report is printed; an empty name is a usage error (2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finder_scale_in_failures_exit_1() {
    let w = World::start("ec2-scale-in").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    w.put("src-bucket", "a", b"hello").await;
    let q = w.queues("jobs", 3, 60).await;
    w.table("ledger").await;
    let cfg = w.config("src-bucket", "dst-bucket", &q, "ledger", json!({}));
    let g = "dth-t4-finder";
    let cfg_json = JobConfig::load(Some(&cfg), None).unwrap();
    template(
        &w,
        g,
        user_data(Role::Finder, &cfg_json, &[], "dth:test", g),
        InstanceType::T4gMicro,
    )
    .await;
    group(&w, g, g, 1, 1, true).await;
    let dry = w.run("finder", &cfg, &["--dry-run", "--scale-in-asg", g]);
    assert!(dry.status.success(), "{}", stderr(&dry));
    assert_eq!(desired(&w, g).await, 1);

    // No such group: the run is done and reported, but the scale-in fails.
    let out = w.run("finder", &cfg, &["--scale-in-asg", "no-such-group"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("enqueued 1 objects"),
        "{}",
        stdout(&out)
    );
    assert!(stderr(&out).contains("no-such-group"), "{}", stderr(&out));

    let out = w.run("finder", &cfg, &["--scale-in-asg", g]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(desired(&w, g).await, 0);

    let empty = w.run("finder", &cfg, &["--scale-in-asg", ""]);
    assert_eq!(empty.status.code(), Some(2), "{}", stderr(&empty));
}

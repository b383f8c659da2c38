//! The EC2 stand-in runs the real binaries for Auto Scaling groups built by hand in moto — launch templates
//! whose user data is `userdata::render` of a LaunchSpec, as the provider will write them — and follows the
//! groups: scheduled finder runs, capacity changes, new template versions, crashed processes.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use aws_sdk_autoscaling::types::{LaunchTemplateSpecification, Tag};
use aws_sdk_ec2::types::RequestLaunchTemplateData;
use base64::Engine;
use dth_core::userdata::{self, LaunchSpec, Role};
use dth_core::JobConfig;
use dth_tests::ec2::{alive, fire_schedule, logs, Launch};
use dth_tests::*;
use serde_json::json;

const TAG: &str = "dth:transfer";

fn user_data(role: Role, config: &JobConfig, args: &[&str]) -> String {
    let text = userdata::render(&LaunchSpec {
        role,
        config: config.clone(),
        args: args.iter().map(|a| a.to_string()).collect(),
        image: "dth:test".into(),
        group: String::new(),
        region: REGION.into(),
        log_group: None,
    });
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn template_data(user_data: String) -> RequestLaunchTemplateData {
    RequestLaunchTemplateData::builder()
        .image_id("ami-12c6146b")
        .instance_type(aws_sdk_ec2::types::InstanceType::T4gMicro)
        .user_data(user_data)
        .build()
}

async fn template(w: &World, name: &str, user_data: String) {
    w.ec2
        .create_launch_template()
        .launch_template_name(name)
        .launch_template_data(template_data(user_data))
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

fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// A transfer as the provider will lay it out: the schedule fires the finder group, the finder enqueues and
/// scales its group back to 0, the worker group's processes copy, and scaling the workers to 0 stops them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_finder_and_worker_group_copy_a_bucket() {
    let t0 = Instant::now();
    let w = World::start("ec2-run").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 3, 60).await;
    w.table("ledger").await;
    let mut expected = BTreeMap::new();
    for (i, k) in [
        "a.txt",
        "b/c d.bin",
        "b/e",
        "ünï/f",
        "g/h/i",
        "zero",
        "j",
        "k",
    ]
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

    let cfg = JobConfig::from_json(
        &w.config_json(
            "src-bucket",
            "dst-bucket",
            &q,
            "ledger",
            json!({"batch": {"max_objects": 3},
                   "multipart": {"threshold": 5 * 1024 * 1024, "chunk_size": 5 * 1024 * 1024},
                   "worker": {"heartbeat_secs": 5, "visibility_secs": 60}}),
        )
        .to_string(),
    )
    .unwrap();
    template(
        &w,
        "dth-t1-worker",
        user_data(Role::Worker, &cfg, &["--concurrency", "2"]),
    )
    .await;
    template(
        &w,
        "dth-t1-finder",
        user_data(Role::Finder, &cfg, &["--scale-in-asg", "dth-t1-finder"]),
    )
    .await;
    group(&w, "dth-t1-worker", "dth-t1-worker", 2, 4, true).await;
    group(&w, "dth-t1-finder", "dth-t1-finder", 0, 1, true).await;
    // Not a transfer's group: the stand-in leaves it alone.
    group(&w, "someone-else", "dth-t1-worker", 1, 1, false).await;
    w.autoscaling
        .put_scheduled_update_group_action()
        .auto_scaling_group_name("dth-t1-finder")
        .scheduled_action_name("run")
        .recurrence("0 2 * * *")
        .min_size(0)
        .max_size(1)
        .desired_capacity(1)
        .send()
        .await
        .unwrap();
    let setup = t0.elapsed();

    let s = w.standin();
    wait_for!(
        Duration::from_secs(60),
        "two worker processes",
        s.running("dth-t1-worker").len() == 2
    );
    assert!(s.launches_of("dth-t1-finder").is_empty());

    let fired = fire_schedule(&w.autoscaling, "dth-t1-finder", None)
        .await
        .unwrap();
    assert_eq!((fired.action.as_str(), fired.desired), ("run", Some(1)));
    let t_fired = Instant::now();

    wait_for!(
        Duration::from_secs(120),
        format!(
            "the finder to run and scale its group in\n{}",
            logs(&s.launches())
        ),
        s.launches_of("dth-t1-finder")
            .first()
            .is_some_and(|l| l.ended.is_some())
            && desired(&w, "dth-t1-finder").await == 0
    );
    let finder = s.launches_of("dth-t1-finder").remove(0);
    let (finder_end, status) = finder.ended.unwrap();
    assert!(
        status.success(),
        "finder failed\n{}",
        logs(std::slice::from_ref(&finder))
    );
    let finder_log = std::fs::read_to_string(&finder.log).unwrap();
    assert!(
        finder_log.contains("set the finder's Auto Scaling group to 0"),
        "{finder_log}"
    );
    let t_finder = t_fired.elapsed();

    wait_for!(
        Duration::from_secs(180),
        format!("the copy\n{}", logs(&s.launches())),
        copied(&w, &expected).await
    );
    let t_copy = t_fired.elapsed();
    assert_eq!(w.keys("dst-bucket").await.len(), expected.len());
    wait_for!(
        Duration::from_secs(60),
        "the queue to drain",
        w.depth(&q.url).await == (0, 0)
    );
    assert_eq!(w.depth(&q.dlq_url).await, (0, 0));

    // The finder exited 0 with its group at 0: never replaced, even after the backoff has passed.
    tokio::time::sleep(
        (finder_end + Duration::from_secs(7)).saturating_duration_since(Instant::now()),
    )
    .await;
    assert_eq!(s.launches_of("dth-t1-finder").len(), 1);
    let workers = s.launches_of("dth-t1-worker");
    assert_eq!(workers.len(), 2, "{}", logs(&workers));
    assert!(workers.iter().all(Launch::running), "{}", logs(&workers));
    assert!(s.launches_of("someone-else").is_empty());
    // Each worker ran from the user data: its own config file (owner-only) and the template's arguments.
    for l in &workers {
        let argv = cmdline(l.pid);
        assert!(argv[0].ends_with("/worker"), "{argv:?}");
        assert_eq!(argv[1], "--config");
        let mode = std::fs::metadata(&argv[2]).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{}", argv[2]);
        assert_eq!(JobConfig::load(Some(argv[2].as_ref()), None).unwrap(), cfg);
        assert_eq!(&argv[3..], ["--concurrency", "2"]);
    }

    let t_scale = Instant::now();
    set_desired(&w, "dth-t1-worker", 0).await;
    wait_for!(
        Duration::from_secs(90),
        format!("the workers to stop\n{}", logs(&workers)),
        workers.iter().all(|l| !alive(l.pid)) && s.running("dth-t1-worker").is_empty()
    );
    for l in s.launches_of("dth-t1-worker") {
        let status = l.ended.unwrap().1;
        assert!(
            status.success(),
            "{status}\n{}",
            logs(std::slice::from_ref(&l))
        );
    }
    let t_stop = t_scale.elapsed();
    drop(s);
    eprintln!(
        "timings: setup {setup:.1?}; schedule fired → finder done {t_finder:.1?}, → copy done {t_copy:.1?}; \
         workers to 0 → stopped {t_stop:.1?}; total {:.1?}",
        t0.elapsed()
    );
}

/// A new launch template version on the group replaces the running processes (new first, then the old
/// stopped); an explicit version pins it; a process that dies is replaced after a backoff; stopping the
/// stand-in stops everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_versions_roll_and_crashes_are_replaced() {
    let t0 = Instant::now();
    let w = World::start("ec2-roll").await;
    w.bucket("src-bucket").await;
    w.bucket("dst-bucket").await;
    let q = w.queues("jobs", 3, 60).await;
    w.table("ledger").await;
    let cfg = JobConfig::from_json(
        &w.config_json("src-bucket", "dst-bucket", &q, "ledger", json!({}))
            .to_string(),
    )
    .unwrap();
    let g = "dth-t2-worker";
    template(
        &w,
        g,
        user_data(Role::Worker, &cfg, &["--concurrency", "2"]),
    )
    .await;
    group(&w, g, g, 2, 4, true).await;

    let s = w.standin();
    wait_for!(
        Duration::from_secs(60),
        "two version-1 workers",
        s.running(g).len() == 2
    );
    let v1 = s.launches_of(g);
    assert!(v1.iter().all(|l| l.template_version == 1));

    // A new version ($Latest moves): an instance refresh.
    let t_refresh = Instant::now();
    w.ec2
        .create_launch_template_version()
        .launch_template_name(g)
        .source_version("1")
        .launch_template_data(template_data(user_data(
            Role::Worker,
            &cfg,
            &["--concurrency", "3"],
        )))
        .send()
        .await
        .unwrap();
    wait_for!(
        Duration::from_secs(90),
        format!("version 2 to replace version 1\n{}", logs(&s.launches())),
        {
            let r = s.running(g);
            r.len() == 2 && r.iter().all(|l| l.template_version == 2)
        }
    );
    let t_refresh = t_refresh.elapsed();
    let v2 = s.running(g);
    let first_v1_end = s.launches_of(g)[..2]
        .iter()
        .map(|l| l.ended.unwrap().0)
        .min()
        .unwrap();
    assert!(
        v2.iter().all(|l| l.started < first_v1_end),
        "new processes start before the old are stopped"
    );
    assert!(v1.iter().all(|l| !alive(l.pid)));
    for l in &v2 {
        assert_eq!(&cmdline(l.pid)[3..], ["--concurrency", "3"]);
    }

    // Pinned back to version 1 by number.
    w.autoscaling
        .update_auto_scaling_group()
        .auto_scaling_group_name(g)
        .launch_template(lt(g, "1"))
        .send()
        .await
        .unwrap();
    wait_for!(
        Duration::from_secs(90),
        format!("version 1 again\n{}", logs(&s.launches())),
        {
            let r = s.running(g);
            r.len() == 2 && r.iter().all(|l| l.template_version == 1)
        }
    );
    assert!(v2.iter().all(|l| !alive(l.pid)));
    assert_eq!(s.launches_of(g).len(), 6);

    // A process dies under the group: replaced, after the backoff.
    let victim = s.running(g)[0].clone();
    let killed = Instant::now();
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim.pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    wait_for!(
        Duration::from_secs(60),
        format!("a replacement\n{}", logs(&s.launches())),
        s.launches_of(g).len() == 7 && s.running(g).len() == 2
    );
    let replacement = s.launches_of(g).pop().unwrap();
    let delay = replacement.started.duration_since(killed);
    assert!(
        delay >= Duration::from_millis(4500),
        "replaced after {delay:?}, before the 5 s backoff"
    );
    assert_eq!(replacement.template_version, 1);

    // Stopping the stand-in stops every process it started.
    let all = s.launches();
    s.stop();
    for l in &all {
        assert!(
            !alive(l.pid),
            "{}-{} (pid {}) outlived the stand-in",
            l.group,
            l.n,
            l.pid
        );
    }
    eprintln!(
        "timings: new version → replaced {t_refresh:.1?}; replacement after a crash {delay:.1?}; total {:.1?}",
        t0.elapsed()
    );
}

/// PIDs whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let parent = format!("PPid:\t{pid}");
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/status"))
                .is_ok_and(|s| s.lines().any(|l| l == parent))
        })
        .collect()
}

/// The `ec2-standin` binary: `fire-schedule` applies an action; `run` plays the group, stops its processes
/// on SIGTERM, and its processes die with it even when it is SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_fires_schedules_and_its_processes_die_with_it() {
    let w = World::start("ec2-bin").await;
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
    template(&w, g, user_data(Role::Worker, &cfg, &[])).await;
    group(&w, g, g, 0, 4, true).await;
    w.autoscaling
        .put_scheduled_update_group_action()
        .auto_scaling_group_name(g)
        .scheduled_action_name("other")
        .recurrence("0 3 * * *")
        .desired_capacity(1)
        .send()
        .await
        .unwrap();
    w.autoscaling
        .put_scheduled_update_group_action()
        .auto_scaling_group_name(g)
        .scheduled_action_name("scale-out")
        .recurrence("0 2 * * *")
        .desired_capacity(2)
        .send()
        .await
        .unwrap();

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

    let bin_dir = bin("worker").parent().unwrap().to_owned();
    let run = || {
        let log = std::fs::File::create(w.dir.join(format!("standin-{}.log", fastrand::u32(..))))
            .unwrap();
        Proc(
            standin(&["run"])
                .arg("--bin-dir")
                .arg(&bin_dir)
                .arg("--log-dir")
                .arg(w.dir.join("ec2"))
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    };

    // SIGKILLed: the kernel takes its processes down with it.
    let mut first = run();
    wait_for!(
        Duration::from_secs(60),
        "two processes under the first stand-in",
        children_of(first.id()).len() == 2
    );
    let kids = children_of(first.id());
    first.kill().unwrap();
    first.wait().unwrap();
    wait_for!(
        Duration::from_secs(10),
        "the processes to die with the stand-in",
        kids.iter().all(|&p| !alive(p))
    );

    // SIGTERMed: it stops its processes and exits 0.
    let mut second = run();
    wait_for!(
        Duration::from_secs(60),
        "two processes under the second stand-in",
        children_of(second.id()).len() == 2
    );
    let kids = children_of(second.id());
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(second.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let status = wait(&mut second, Duration::from_secs(90));
    assert!(status.success(), "{status}");
    assert!(kids.iter().all(|&p| !alive(p)));
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
    template(&w, g, user_data(Role::Finder, &cfg_json, &[])).await;
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

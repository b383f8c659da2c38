//! One instance of the EC2 stand-in, run the way EC2, cloud-init and systemd would run it:
//! - a machine ([`crate::instance::Instance`] with the acting shims: its own root, mount and PID namespaces)
//!   whose platform comes from its instance type (t4g → arm64: the image's arm64 binaries run under
//!   `qemu-aarch64-static`);
//! - its instance metadata service (IMDSv2 only: a session token for every read) serving its instance id,
//!   `autoscaling/target-lifecycle-state` and the instance profile's credentials — the only credentials
//!   anything on the machine gets;
//! - cloud-init: the launch template's user data, run once as root;
//! - systemd, as far as dth's units use it: the units the user data enabled are started from their files
//!   (`EnvironmentFile=`, `ExecStartPre=` with `-`, `ExecStart=`, `Restart=`/`RestartSec=`,
//!   `StartLimitIntervalSec=`/`StartLimitBurst=` then `OnFailure=`, `ExecStop=` and `TimeoutStopSec=` then
//!   SIGKILL); `RestartSteps=` is ignored as by systemd 252 (Amazon Linux 2023);
//! - termination: with a termination lifecycle hook the machine waits in `Terminating:Wait` (the metadata
//!   says `Terminated`) until the action is completed or the hook times out, then shuts down: units are
//!   stopped as systemd stops them, then the power goes.
//!
//! Everything it runs comes from the user data and the unit files: nothing here knows what dth's binaries are.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{anyhow, Context as _};
use tokio::net::TcpListener;
use tokio::process::Child;
use tokio_util::sync::CancellationToken;

use crate::http::{self, Request, Response};
use crate::instance::{self, Instance, Shims};
use crate::systemd::{self, Unit};

/// The instance profile's keys, served by the metadata service.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

/// What an instance boots with.
#[derive(Debug, Clone)]
pub struct Boot {
    pub id: String,
    /// Where its root goes (created; removed when the machine is off).
    pub root: PathBuf,
    /// Its console: cloud-init's output, every unit's output, and the stand-in's notes.
    pub console: PathBuf,
    /// The user data script (decoded).
    pub user_data: String,
    /// `amd64` or `arm64`.
    pub arch: &'static str,
    /// What the network gives every process on the machine besides the metadata service: the AWS endpoints
    /// the CLI uses (`AWS_ENDPOINT_URL_AUTO_SCALING`, ...).
    pub env: BTreeMap<String, String>,
    pub credentials: Option<Credentials>,
    /// The instance profile's role name.
    pub role: String,
}

/// The target lifecycle state while in service.
pub const IN_SERVICE: &str = "InService";
/// The target lifecycle state once scale-in has picked the instance.
pub const TERMINATED: &str = "Terminated";

/// The handle the Auto Scaling side keeps on a machine.
#[derive(Debug)]
pub struct Ctl {
    pub id: String,
    target: Mutex<&'static str>,
    /// The termination hook whose action is pending, if any.
    waiting_on: Mutex<Option<String>>,
    lifecycle_done: CancellationToken,
    shutdown: CancellationToken,
    off: CancellationToken,
    unhealthy: AtomicBool,
    /// TerminateInstanceInAutoScalingGroup asked for it.
    picked: AtomicBool,
    serving: AtomicBool,
}

impl Ctl {
    pub fn new(id: impl Into<String>) -> Arc<Self> {
        Arc::new(Self {
            id: id.into(),
            target: Mutex::new(IN_SERVICE),
            waiting_on: Mutex::new(None),
            lifecycle_done: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            off: CancellationToken::new(),
            unhealthy: AtomicBool::new(false),
            picked: AtomicBool::new(false),
            serving: AtomicBool::new(false),
        })
    }

    /// Begin termination. With a termination hook (name, heartbeat timeout), the machine stays up in
    /// `Terminating:Wait` until [`Ctl::complete_lifecycle_action`] or the timeout; then it shuts down.
    pub fn terminate(self: &Arc<Self>, hook: Option<(String, Duration)>) {
        if *lock(&self.target) == TERMINATED {
            return;
        }
        *lock(&self.target) = TERMINATED;
        let ctl = self.clone();
        tokio::spawn(async move {
            if let Some((name, timeout)) = hook {
                *lock(&ctl.waiting_on) = Some(name.clone());
                tracing::info!(instance = %ctl.id, hook = %name, ?timeout, "Terminating:Wait");
                tokio::select! {
                    _ = ctl.lifecycle_done.cancelled() => {
                        tracing::info!(instance = %ctl.id, hook = %name, "lifecycle action completed: Terminating:Proceed");
                    }
                    _ = tokio::time::sleep(timeout) => {
                        tracing::warn!(instance = %ctl.id, hook = %name, "lifecycle hook timed out: Terminating:Proceed");
                    }
                    _ = ctl.off.cancelled() => {}
                }
                *lock(&ctl.waiting_on) = None;
            }
            ctl.shutdown.cancel();
        });
    }

    /// CompleteLifecycleAction for this instance: accepted only while it waits on `hook`.
    pub fn complete_lifecycle_action(&self, hook: &str) -> bool {
        let waiting = lock(&self.waiting_on).as_deref() == Some(hook);
        if waiting {
            self.lifecycle_done.cancel();
        }
        waiting
    }

    /// SetInstanceHealth Unhealthy: its group replaces it.
    pub fn set_unhealthy(&self) {
        self.unhealthy.store(true, Ordering::SeqCst);
    }

    pub fn unhealthy(&self) -> bool {
        self.unhealthy.load(Ordering::SeqCst)
    }

    /// TerminateInstanceInAutoScalingGroup: its group terminates it (and, keeping its size, replaces it).
    pub fn pick_for_termination(&self) {
        self.picked.store(true, Ordering::SeqCst);
    }

    /// Whether its group is to terminate it: unhealthy, or picked.
    pub fn to_retire(&self) -> bool {
        self.unhealthy() || self.picked.load(Ordering::SeqCst)
    }

    /// Whether a unit's main process runs (what a load balancer's health check would see).
    pub fn serving(&self) -> bool {
        self.serving.load(Ordering::SeqCst)
    }

    /// Whether termination has begun.
    pub fn terminating(&self) -> bool {
        *lock(&self.target) == TERMINATED
    }

    /// Whether the machine is off.
    pub fn off(&self) -> bool {
        self.off.is_cancelled()
    }

    /// Cut the power now, without waiting on a lifecycle hook (the stand-in stopping).
    pub fn power_off(&self) {
        *lock(&self.target) = TERMINATED;
        self.shutdown.cancel();
    }

    pub async fn wait_off(&self) {
        self.off.cancelled().await
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Run a machine from boot to power-off. Returns when it is off; its root is removed then.
pub async fn run(boot: Boot, ctl: Arc<Ctl>) {
    let console = boot.console.clone();
    if let Err(e) = machine(&boot, &ctl).await {
        note(&console, &format!("machine failed: {e:#}"));
        tracing::error!(instance = %boot.id, "machine failed: {e:#}");
    }
    ctl.serving.store(false, Ordering::SeqCst);
    ctl.off.cancel();
    let _ = std::fs::remove_dir_all(&boot.root);
}

/// A line of the stand-in's own on the machine's console.
fn note(console: &std::path::Path, line: &str) {
    if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(console) {
        let _ = writeln!(f, "[ec2-standin] {line}");
    }
}

async fn machine(boot: &Boot, ctl: &Arc<Ctl>) -> anyhow::Result<()> {
    let inst = Arc::new(Instance::with_shims(&boot.root, Shims::Acting, &[])?);
    let machine_dir = inst.path(instance::MACHINE_DIR);
    std::fs::create_dir_all(&machine_dir)?;
    std::fs::write(machine_dir.join("arch"), boot.arch)?;

    // The metadata service, at its link-local address as far as the machine is concerned.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let imds_url = format!("http://{}", listener.local_addr()?);
    let stop_imds = CancellationToken::new();
    let _stop_imds = stop_imds.clone().drop_guard();
    tokio::spawn(http::serve(
        listener,
        {
            let (ctl, boot) = (ctl.clone(), Arc::new(boot.clone()));
            let token = format!("imds-{}-{}", boot.id, fastrand::u64(..));
            move |req| {
                let (ctl, boot, token) = (ctl.clone(), boot.clone(), token.clone());
                async move { imds(&req, &ctl, &boot, &token) }
            }
        },
        stop_imds,
    ));
    std::fs::write(
        machine_dir.join("container.env"),
        format!("AWS_EC2_METADATA_SERVICE_ENDPOINT={imds_url}\n"),
    )?;
    let mut env = boot.env.clone();
    env.insert("AWS_EC2_METADATA_SERVICE_ENDPOINT".into(), imds_url);

    // cloud-init: the user data, once, as root.
    let user_data = inst.path("/var/lib/cloud/instance/user-data.txt");
    std::fs::create_dir_all(user_data.parent().expect("has a parent"))?;
    std::fs::write(&user_data, &boot.user_data)?;
    note(
        &boot.console,
        &format!("{} booting ({})", boot.id, boot.arch),
    );
    inst.boot()?;
    let sys = Arc::new(Systemd {
        inst: inst.clone(),
        env,
        console: boot.console.clone(),
        ctl: ctl.clone(),
    });
    let status = tokio::select! {
        s = sys.run_to_end(&["/bin/bash", "/var/lib/cloud/instance/user-data.txt"], &sys.env) => s?,
        _ = ctl.shutdown.cancelled() => {
            inst.shutdown();
            return Ok(());
        }
    };
    note(&boot.console, &format!("cloud-init: user data {status}"));
    let mut units = Vec::new();
    if status.success() {
        // What the user data asked systemd for, in order.
        for call in inst.calls_to("systemctl") {
            let name = match call.iter().map(String::as_str).collect::<Vec<_>>()[..] {
                ["enable", "--now", name] | ["start", name] => name.to_owned(),
                _ => continue,
            };
            if !inst.path(&format!("/etc/systemd/system/{name}")).is_file() {
                // The AMI's own units (docker.service): nothing to play.
                continue;
            }
            let stop = CancellationToken::new();
            let task = tokio::spawn(sys.clone().unit(name.clone(), stop.clone()));
            units.push((name, stop, task));
        }
    }
    ctl.shutdown.cancelled().await;
    note(&boot.console, "shutting down: stopping units");
    // systemd stops units in the reverse of their start order.
    for (name, stop, task) in units.into_iter().rev() {
        stop.cancel();
        if let Err(e) = task.await {
            tracing::warn!(unit = %name, "unit task: {e}");
        }
    }
    note(&boot.console, "power off");
    inst.shutdown();
    Ok(())
}

/// IMDSv2: `PUT /latest/api/token`, then reads with that token.
fn imds(req: &Request, ctl: &Ctl, boot: &Boot, token: &str) -> Response {
    if req.method == "PUT" && req.path() == "/latest/api/token" {
        let Some(ttl) = req.header("x-aws-ec2-metadata-token-ttl-seconds") else {
            return Response::text(400, "missing x-aws-ec2-metadata-token-ttl-seconds");
        };
        let mut r = Response::text(200, token);
        r.headers.push((
            "X-aws-ec2-metadata-token-ttl-seconds".into(),
            ttl.to_owned(),
        ));
        return r;
    }
    if req.method != "GET" {
        return Response::text(405, "");
    }
    if req.header("x-aws-ec2-metadata-token") != Some(token) {
        return Response::text(401, "");
    }
    let creds_path = "/latest/meta-data/iam/security-credentials/";
    match req.path() {
        "/latest/meta-data/instance-id" => Response::text(200, boot.id.clone()),
        "/latest/meta-data/autoscaling/target-lifecycle-state" => {
            Response::text(200, *lock(&ctl.target))
        }
        p if p == creds_path && boot.credentials.is_some() => {
            Response::text(200, boot.role.clone())
        }
        p if boot.credentials.is_some() && p.strip_prefix(creds_path) == Some(&boot.role) => {
            let c = boot.credentials.as_ref().expect("checked");
            let at = |t: SystemTime| {
                aws_smithy_types::DateTime::from(t)
                    .fmt(aws_smithy_types::date_time::Format::DateTime)
                    .unwrap_or_default()
            };
            let now = SystemTime::now();
            let body = serde_json::json!({
                "Code": "Success",
                "LastUpdated": at(now),
                "Type": "AWS-HMAC",
                "AccessKeyId": c.access_key_id,
                "SecretAccessKey": c.secret_access_key,
                "Token": c.session_token.clone().unwrap_or_default(),
                "Expiration": at(now + Duration::from_secs(6 * 3600)),
            });
            Response::new(200, "application/json", body.to_string())
        }
        _ => Response::text(404, ""),
    }
}

/// systemd, as far as dth's units use it.
struct Systemd {
    inst: Arc<Instance>,
    /// The manager's environment (`DefaultEnvironment=`): what the network gives.
    env: BTreeMap<String, String>,
    console: PathBuf,
    ctl: Arc<Ctl>,
}

impl Systemd {
    fn spawn(&self, argv: &[&str], env: &BTreeMap<String, String>) -> anyhow::Result<Child> {
        let out = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.console)
            .with_context(|| format!("opening {}", self.console.display()))?;
        let err: File = out.try_clone()?;
        let mut cmd = self.inst.command(argv, env)?;
        cmd.stdout(out).stderr(err);
        tokio::process::Command::from(cmd)
            .spawn()
            .with_context(|| format!("starting {argv:?}"))
    }

    async fn run_to_end(
        &self,
        argv: &[&str],
        env: &BTreeMap<String, String>,
    ) -> anyhow::Result<std::process::ExitStatus> {
        Ok(self.spawn(argv, env)?.wait().await?)
    }

    fn unit_file(&self, name: &str) -> anyhow::Result<Unit> {
        let path = self.inst.path(&format!("/etc/systemd/system/{name}"));
        Unit::parse(&std::fs::read_to_string(&path).with_context(|| format!("reading {name}"))?)
            .with_context(|| format!("parsing {name}"))
    }

    /// The manager's environment plus the unit's `EnvironmentFile=`s (a `-` prefix: optional), read afresh at
    /// every start as systemd does.
    fn environment(&self, unit: &Unit) -> anyhow::Result<BTreeMap<String, String>> {
        let mut env = self.env.clone();
        for file in unit.all("Service", "EnvironmentFile") {
            let (optional, file) = match file.strip_prefix('-') {
                Some(f) => (true, f),
                None => (false, file),
            };
            match std::fs::read_to_string(self.inst.path(file)) {
                Ok(text) => env.extend(systemd::environment_file(&text)),
                Err(_) if optional => {}
                Err(e) => return Err(anyhow!("EnvironmentFile={file}: {e}")),
            }
        }
        Ok(env)
    }

    /// Run one unit until `stop`: start, restart per its settings, and on failure start its `OnFailure=`.
    async fn unit(self: Arc<Self>, name: String, stop: CancellationToken) {
        match self.unit_inner(&name, &stop).await {
            Ok(true) => {
                let on_failure = self
                    .unit_file(&name)
                    .ok()
                    .and_then(|u| u.get("Unit", "OnFailure").map(str::to_owned))
                    .unwrap_or_default();
                for other in on_failure.split_whitespace() {
                    note(&self.console, &format!("{name} failed: starting {other}"));
                    if let Err(e) = self.oneshot(other).await {
                        note(&self.console, &format!("{other}: {e:#}"));
                    }
                }
            }
            Ok(false) => {}
            Err(e) => note(&self.console, &format!("{name}: {e:#}")),
        }
    }

    /// Returns whether the unit ended failed.
    async fn unit_inner(&self, name: &str, stop: &CancellationToken) -> anyhow::Result<bool> {
        let unit = self.unit_file(name)?;
        let secs = |key: &str, default: f64| {
            unit.seconds("Service", key)
                .map(Duration::from_secs)
                .unwrap_or(Duration::from_secs_f64(default))
        };
        let restart = unit.get("Service", "Restart").unwrap_or("no").to_owned();
        let restart_sec = secs("RestartSec", 0.1);
        let stop_timeout = secs("TimeoutStopSec", 90.0);
        let start_timeout = secs("TimeoutStartSec", 90.0);
        let interval = unit
            .seconds("Unit", "StartLimitIntervalSec")
            .map(Duration::from_secs)
            .unwrap_or(Duration::from_secs(10));
        let burst: usize = unit
            .get("Unit", "StartLimitBurst")
            .and_then(|b| b.parse().ok())
            .unwrap_or(5);
        let mut starts: VecDeque<Instant> = VecDeque::new();
        loop {
            let now = Instant::now();
            while starts
                .front()
                .is_some_and(|t| now.duration_since(*t) >= interval)
            {
                starts.pop_front();
            }
            if starts.len() >= burst {
                note(
                    &self.console,
                    &format!("{name}: start request repeated too quickly, refusing to start"),
                );
                return Ok(true);
            }
            starts.push_back(now);
            let env = self.environment(&unit)?;
            // ExecStartPre=, each to its end (within TimeoutStartSec).
            let mut ok = true;
            for line in unit.all("Service", "ExecStartPre") {
                let exec = systemd::exec(line, &env)?;
                let argv: Vec<&str> = exec.argv.iter().map(String::as_str).collect();
                let mut child = self.spawn(&argv, &env)?;
                let status = tokio::select! {
                    s = tokio::time::timeout(start_timeout, child.wait()) => match s {
                        Ok(s) => s?,
                        Err(_) => {
                            kill_inside(&mut child).await;
                            note(&self.console, &format!("{name}: start timed out"));
                            ok = false;
                            break;
                        }
                    },
                    _ = stop.cancelled() => {
                        kill_inside(&mut child).await;
                        return Ok(false);
                    }
                };
                if !status.success() && !exec.ignore_failure {
                    note(&self.console, &format!("{name}: {line}: {status}"));
                    ok = false;
                    break;
                }
            }
            let success = if ok {
                let line = unit
                    .get("Service", "ExecStart")
                    .with_context(|| format!("{name} has no ExecStart="))?;
                let exec = systemd::exec(line, &env)?;
                let argv: Vec<&str> = exec.argv.iter().map(String::as_str).collect();
                let mut main = self.spawn(&argv, &env)?;
                self.ctl.serving.store(true, Ordering::SeqCst);
                let status = tokio::select! {
                    s = main.wait() => s?,
                    _ = stop.cancelled() => {
                        self.stop_unit(name, &unit, &env, &mut main, stop_timeout).await;
                        self.ctl.serving.store(false, Ordering::SeqCst);
                        return Ok(false);
                    }
                };
                self.ctl.serving.store(false, Ordering::SeqCst);
                note(
                    &self.console,
                    &format!("{name}: main process exited, {status}"),
                );
                status.success() || exec.ignore_failure
            } else {
                false
            };
            let again = match restart.as_str() {
                "always" => true,
                "on-failure" | "on-abnormal" => !success,
                _ => false,
            };
            if !again {
                return Ok(!success);
            }
            tokio::select! {
                _ = tokio::time::sleep(restart_sec) => {}
                _ = stop.cancelled() => return Ok(false),
            }
        }
    }

    /// Stop a running unit: its `ExecStop=` lines (with `$MAINPID`), then SIGKILL to whatever is left when
    /// `TimeoutStopSec=` has passed.
    async fn stop_unit(
        &self,
        name: &str,
        unit: &Unit,
        env: &BTreeMap<String, String>,
        main: &mut Child,
        timeout: Duration,
    ) {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut env = env.clone();
        if let Some(pid) = main
            .id()
            .and_then(|p| instance::children(p).first().copied())
        {
            env.insert("MAINPID".into(), pid.to_string());
        }
        note(&self.console, &format!("stopping {name}"));
        for line in unit.all("Service", "ExecStop") {
            let Ok(exec) = systemd::exec(line, &env) else {
                continue;
            };
            let argv: Vec<&str> = exec.argv.iter().map(String::as_str).collect();
            match self.spawn(&argv, &env) {
                Ok(mut child) => {
                    if tokio::time::timeout_at(deadline, child.wait())
                        .await
                        .is_err()
                    {
                        kill_inside(&mut child).await;
                    }
                }
                Err(e) => note(&self.console, &format!("{name}: {line}: {e:#}")),
            }
        }
        if tokio::time::timeout_at(deadline, main.wait())
            .await
            .is_err()
        {
            note(
                &self.console,
                &format!("{name}: stop timed out after {timeout:?}: SIGKILL"),
            );
            kill_inside(main).await;
        }
        note(&self.console, &format!("stopped {name}"));
    }

    /// A `Type=oneshot` unit: its `ExecStart=` lines in order, to the end.
    async fn oneshot(&self, name: &str) -> anyhow::Result<()> {
        let unit = self.unit_file(name)?;
        let env = self.environment(&unit)?;
        for line in unit.all("Service", "ExecStart") {
            let exec = systemd::exec(line, &env)?;
            let argv: Vec<&str> = exec.argv.iter().map(String::as_str).collect();
            let status = self.run_to_end(&argv, &env).await?;
            note(&self.console, &format!("{name}: {line}: {status}"));
            if !status.success() && !exec.ignore_failure {
                anyhow::bail!("{name} failed");
            }
        }
        Ok(())
    }
}

/// SIGKILL the process `nsenter` runs inside the instance, then `nsenter` itself, and reap.
async fn kill_inside(child: &mut Child) {
    if let Some(pid) = child.id() {
        for inside in instance::children(pid) {
            if let Some(p) = i32::try_from(inside)
                .ok()
                .and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(p, rustix::process::Signal::KILL);
            }
        }
    }
    let _ = child.kill().await;
}

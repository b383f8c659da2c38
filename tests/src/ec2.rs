//! A stand-in for EC2: moto stores Auto Scaling groups and launch templates but runs nothing, so this plays
//! the part of the instances.
//!
//! For every group carrying the transfer tag it keeps exactly DesiredCapacity real `finder`/`worker`
//! processes running, each started the way the launch template's user data says (role, job config,
//! arguments: [`dth_core::userdata::parse`]) — so the provider's launch-template path is what the tests run,
//! not a shortcut around it. It behaves like an Auto Scaling group where that matters to dth:
//! - desired capacity lowered → the newest surplus processes get SIGTERM, and SIGKILL after a grace period
//!   (the lifecycle of a terminating instance);
//! - the group's launch template version changes (an explicit number, or what `$Latest` / `$Default`
//!   resolve to) → new processes are started from the new version and, once they are in service, the old
//!   ones get SIGTERM (an instance refresh);
//! - a process exits while the group still wants it → a replacement after a backoff (an unhealthy instance
//!   replaced), except a process that exited 0 while the group's desired capacity went to 0 meanwhile: a
//!   finder that scaled its own group in at the end of a scheduled run.
//!
//! [`fire_schedule`] plays the other thing moto never does: a scheduled action firing.
//!
//! Children never outlive the stand-in: they are SIGTERMed and reaped when it stops, killed when their
//! handle is dropped, and (where `setpriv` exists) get SIGKILL from the kernel if the stand-in dies
//! without cleaning up.

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use aws_sdk_autoscaling::types::AutoScalingGroup;
use dth_core::userdata::{self, Role};
use tokio_util::sync::CancellationToken;

/// The tag every group of a dth transfer carries (its value is the transfer's id).
pub const DEFAULT_TAG_KEY: &str = "dth:transfer";

/// Where the kernel's parent-death signal can be set without `unsafe` code (util-linux).
const SETPRIV: [&str; 2] = ["/usr/bin/setpriv", "/bin/setpriv"];

/// Environment variables handed to every process: what an instance gets from its profile and image.
/// Nothing else is inherited, so a developer's `AWS_ENDPOINT_URL` or `DTH_CONFIG` cannot leak into a run;
/// `AWS_CA_BUNDLE` is left out on purpose (a stale one breaks the SDK even for http endpoints).
const PASSED_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "TMPDIR",
    "LANG",
    "TZ",
    "RUST_LOG",
    "RUST_BACKTRACE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
];

#[derive(Debug, Clone)]
pub struct Options {
    /// The Auto Scaling and EC2 endpoint (moto serves both on one port).
    pub endpoint: String,
    /// The control-plane region: where the groups and templates live, and `AWS_REGION` of every process.
    pub region: String,
    /// Directory holding the `finder` and `worker` binaries.
    pub bin_dir: PathBuf,
    /// Process logs (`<group>-<n>.log`) and the job configs taken from user data.
    pub log_dir: PathBuf,
    /// Only groups with this tag key are played.
    pub tag_key: String,
    /// The environment of every process (see [`PASSED_ENV`]). Its AWS keys, when present, are also the
    /// stand-in's own: the stand-in and its instances share one identity, like an instance profile.
    pub env: Vec<(OsString, OsString)>,
    /// How often the groups are read.
    pub poll: Duration,
    /// First and longest wait before replacing a process that exited.
    pub backoff: (Duration, Duration),
    /// SIGTERM → SIGKILL (an Auto Scaling lifecycle's default heartbeat is far longer; 60 s is plenty for a
    /// worker to finish or release its jobs).
    pub grace: Duration,
}

impl Options {
    /// Defaults: the `dth:transfer` tag, 1 s polls, 5 s → 60 s backoff, 60 s grace, and this process's
    /// credentials and region passed through.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        bin_dir: impl Into<PathBuf>,
        log_dir: impl Into<PathBuf>,
    ) -> Self {
        let region = region.into();
        let mut env: Vec<(OsString, OsString)> = PASSED_ENV
            .iter()
            .filter_map(|k| std::env::var_os(k).map(|v| (OsString::from(k), v)))
            .collect();
        env.push(("AWS_REGION".into(), region.clone().into()));
        // Never wait on an instance metadata service that is not there.
        env.push(("AWS_EC2_METADATA_DISABLED".into(), "true".into()));
        Self {
            endpoint: endpoint.into(),
            region,
            bin_dir: bin_dir.into(),
            log_dir: log_dir.into(),
            tag_key: DEFAULT_TAG_KEY.into(),
            env,
            poll: Duration::from_secs(1),
            backoff: (Duration::from_secs(5), Duration::from_secs(60)),
            grace: Duration::from_secs(60),
        }
    }

    /// Set (or replace) one variable of the processes' environment.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        let key = key.into();
        self.env.retain(|(k, _)| *k != key);
        self.env.push((key, value.into()));
        self
    }

    fn env_var(&self, key: &str) -> Option<String> {
        self.env
            .iter()
            .find(|(k, _)| k == OsStr::new(key))
            .and_then(|(_, v)| v.to_str().map(str::to_owned))
    }
}

/// Auto Scaling and EC2 clients for `endpoint`/`region`, with the given keys (id, secret, session token) or,
/// without them, the SDK's default chain.
pub async fn clients(
    endpoint: &str,
    region: &str,
    keys: Option<(String, String, Option<String>)>,
) -> (aws_sdk_autoscaling::Client, aws_sdk_ec2::Client) {
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        // A hung call must not stall the loop: the next tick asks again.
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(20))
                .build(),
        );
    if let Some((id, secret, token)) = keys {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            id,
            secret,
            token,
            None,
            "ec2-standin",
        ));
    }
    let sdk = loader.load().await;
    (
        aws_sdk_autoscaling::Client::new(&sdk),
        aws_sdk_ec2::Client::new(&sdk),
    )
}

/// One process the stand-in started: what the tests look at.
#[derive(Debug, Clone)]
pub struct Launch {
    pub group: String,
    /// 1, 2, ... per group: the `<group>-<n>.log` number.
    pub n: u32,
    pub pid: u32,
    pub role: Role,
    pub template_id: String,
    pub template_version: i64,
    pub log: PathBuf,
    pub started: Instant,
    /// Set when the process has exited and been reaped.
    pub ended: Option<(Instant, ExitStatus)>,
}

impl Launch {
    pub fn running(&self) -> bool {
        self.ended.is_none()
    }
}

/// Every launch's log, headed by its group, number, pid and exit status: for a failed test's message.
pub fn logs(launches: &[Launch]) -> String {
    launches
        .iter()
        .map(|l| {
            format!(
                "--- {}-{} (pid {}, {:?}):\n{}",
                l.group,
                l.n,
                l.pid,
                l.ended.map(|e| e.1),
                std::fs::read_to_string(&l.log).unwrap_or_default()
            )
        })
        .collect()
}

type Launches = Arc<Mutex<Vec<Launch>>>;

fn lock(l: &Launches) -> std::sync::MutexGuard<'_, Vec<Launch>> {
    // A panic elsewhere while holding the lock leaves the list itself intact.
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running stand-in on its own thread; dropping it (or [`Ec2StandIn::stop`]) stops every process it started
/// and waits for them.
pub struct Ec2StandIn {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    launches: Launches,
}

impl Ec2StandIn {
    /// Start playing EC2 for the groups of `opts.endpoint`. The loop runs on a dedicated thread with its own
    /// runtime: every child is forked from that one thread, which lives exactly as long as the stand-in
    /// (the parent-death signal is tied to the forking thread, not the process).
    pub fn spawn(opts: Options) -> std::io::Result<Self> {
        let stop = CancellationToken::new();
        let launches = Launches::default();
        let thread = {
            let (stop, launches) = (stop.clone(), launches.clone());
            std::thread::Builder::new()
                .name("ec2-standin".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            tracing::error!("ec2 stand-in: no runtime: {e}");
                            return;
                        }
                    };
                    if let Err(e) = rt.block_on(run_recording(opts, stop, launches)) {
                        tracing::error!("ec2 stand-in stopped: {e:#}");
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            launches,
        })
    }

    /// Every process started so far, in start order.
    pub fn launches(&self) -> Vec<Launch> {
        lock(&self.launches).clone()
    }

    /// The processes started for one group, in start order.
    pub fn launches_of(&self, group: &str) -> Vec<Launch> {
        lock(&self.launches)
            .iter()
            .filter(|l| l.group == group)
            .cloned()
            .collect()
    }

    /// The processes of one group still running.
    pub fn running(&self, group: &str) -> Vec<Launch> {
        self.launches_of(group)
            .into_iter()
            .filter(Launch::running)
            .collect()
    }

    /// SIGTERM every process, wait for them (SIGKILL after the grace period) and end the loop.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Ec2StandIn {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Run the stand-in on the current thread until `stop` is cancelled (the binary's `run`).
pub async fn run(opts: Options, stop: CancellationToken) -> anyhow::Result<()> {
    run_recording(opts, stop, Launches::default()).await
}

async fn run_recording(
    opts: Options,
    stop: CancellationToken,
    launches: Launches,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    for role in [Role::Finder, Role::Worker] {
        let bin = opts.bin_dir.join(role.binary());
        if !bin.is_file() {
            bail!(
                "{} is missing (build the finder and worker first)",
                bin.display()
            );
        }
    }
    let keys = match (
        opts.env_var("AWS_ACCESS_KEY_ID"),
        opts.env_var("AWS_SECRET_ACCESS_KEY"),
    ) {
        (Some(id), Some(secret)) => Some((id, secret, opts.env_var("AWS_SESSION_TOKEN"))),
        _ => None,
    };
    let (asg, ec2) = clients(&opts.endpoint, &opts.region, keys).await;
    let setpriv = SETPRIV
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf);
    if setpriv.is_none() {
        tracing::warn!("setpriv not found: processes are stopped when the stand-in stops, but not if it is killed");
    }
    tracing::info!(
        endpoint = %opts.endpoint, region = %opts.region, tag_key = %opts.tag_key,
        "ec2 stand-in: playing the instances of tagged Auto Scaling groups"
    );
    let mut s = Supervisor {
        opts,
        asg,
        ec2,
        setpriv,
        groups: BTreeMap::new(),
        launches,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // Dropping a tick midway is safe: children are recorded the moment they are forked, and the
            // only awaits are the reads of groups and templates.
            _ = s.tick() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(s.opts.poll) => {}
        }
    }
    s.shutdown().await;
    Ok(())
}

/// A launch template version as the group uses it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct VersionKey {
    template_id: String,
    version: i64,
}

impl std::fmt::Display for VersionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} v{}", self.template_id, self.version)
    }
}

/// What a version's user data starts.
#[derive(Debug, Clone)]
struct Spec {
    key: VersionKey,
    role: Role,
    args: Vec<String>,
    config: PathBuf,
}

struct Instance {
    child: Child,
    n: u32,
    key: VersionKey,
    started: Instant,
}

impl Instance {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Instance {
    /// Whatever path drops an instance, its process goes with it.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

struct Draining {
    inst: Instance,
    kill_at: Instant,
}

#[derive(Default)]
struct Group {
    desired: usize,
    /// The version processes are started from; kept when a newer version's user data cannot be used.
    spec: Option<Spec>,
    /// A version whose user data was rejected, so the error is logged once, not every second.
    rejected: Option<VersionKey>,
    running: Vec<Instance>,
    draining: Vec<Draining>,
    /// Exits seen but not yet judged (that needs the group's desired capacity read after the exit).
    exits: Vec<(Instance, ExitStatus)>,
    next_n: u32,
    not_before: Option<Instant>,
    backoff: Option<Duration>,
    /// Whether the group was in the last listing; a group that vanished is drained and forgotten.
    listed: bool,
}

struct Supervisor {
    opts: Options,
    asg: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    setpriv: Option<PathBuf>,
    groups: BTreeMap<String, Group>,
    launches: Launches,
}

/// What [`decide`] wants done to one group.
#[derive(Debug, Default, PartialEq, Eq)]
struct Decision {
    /// Processes to start from the current spec.
    start: usize,
    /// Indexes into the running list to SIGTERM.
    terminate: Vec<usize>,
}

/// The group's rules, without processes: `running` holds, oldest first, whether each process runs the current
/// version and whether it is in service (alive for a poll interval).
fn decide(desired: usize, running: &[(bool, bool)], can_start: bool) -> Decision {
    let mut d = Decision::default();
    let fresh: Vec<usize> = (0..running.len()).filter(|&i| running[i].0).collect();
    if fresh.len() < desired && can_start {
        d.start = desired - fresh.len();
    }
    if fresh.len() > desired {
        // Scale-in takes the newest first: the oldest have the most work in hand.
        d.terminate
            .extend(fresh.iter().rev().take(fresh.len() - desired).copied());
    }
    // Instance refresh: old versions go once enough new ones are in service (or nothing is wanted at all).
    let in_service = fresh.iter().filter(|&&i| running[i].1).count();
    if desired == 0 || in_service >= desired {
        d.terminate
            .extend((0..running.len()).filter(|&i| !running[i].0));
    }
    d
}

fn file_stem(group: &str) -> String {
    group
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn signal(pid: u32, sig: rustix::process::Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("pid {pid} out of range")))?;
    rustix::process::kill_process(pid, sig).map_err(std::io::Error::from)
}

/// Whether a process with this PID exists (a zombie counts).
pub fn alive(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .is_some_and(|p| rustix::process::test_kill_process(p).is_ok())
}

impl Supervisor {
    async fn tick(&mut self) {
        // Reap before reading the groups, so that a finder which set its group to 0 and then exited is judged
        // against the capacity it left behind.
        self.reap();
        let groups = match self.describe().await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("reading Auto Scaling groups: {e:#}");
                return;
            }
        };
        for g in self.groups.values_mut() {
            g.listed = false;
        }
        for group in groups {
            let Some(name) = group.auto_scaling_group_name().map(str::to_owned) else {
                continue;
            };
            let desired = usize::try_from(group.desired_capacity().unwrap_or(0)).unwrap_or(0);
            let resolved = self.resolve(&name, &group).await;
            let entry = self.groups.entry(name.clone()).or_default();
            entry.listed = true;
            if entry.desired != desired {
                tracing::info!(group = %name, from = entry.desired, to = desired, "desired capacity changed");
                entry.desired = desired;
            }
            match resolved {
                Ok(Some((key, user_data))) => self.adopt(&name, key, &user_data),
                Ok(None) => {}
                Err(e) => tracing::warn!(group = %name, "reading its launch template: {e:#}"),
            }
            self.reconcile(&name);
        }
        let gone: Vec<String> = self
            .groups
            .iter()
            .filter(|(_, g)| !g.listed)
            .map(|(n, _)| n.clone())
            .collect();
        for name in gone {
            self.forget(&name);
        }
    }

    /// Collect exits: of running processes (judged after the next read of the groups) and of terminating ones
    /// (expected; SIGKILL when their grace is over).
    fn reap(&mut self) {
        let now = Instant::now();
        for (name, g) in &mut self.groups {
            let mut i = 0;
            while i < g.running.len() {
                match g.running[i].child.try_wait() {
                    Ok(Some(status)) => {
                        let inst = g.running.remove(i);
                        record_exit(&self.launches, name, inst.n, status);
                        g.exits.push((inst, status));
                    }
                    Ok(None) => i += 1,
                    Err(e) => {
                        tracing::warn!(group = %name, pid = g.running[i].pid(), "waiting: {e}");
                        i += 1;
                    }
                }
            }
            let mut i = 0;
            while i < g.draining.len() {
                let d = &mut g.draining[i];
                let status = match d.inst.child.try_wait() {
                    Ok(Some(s)) => Some(s),
                    Ok(None) if now >= d.kill_at => {
                        tracing::warn!(group = %name, pid = d.inst.pid(), grace = ?self.opts.grace,
                            "still running after SIGTERM: SIGKILL");
                        let _ = d.inst.child.kill();
                        d.inst.child.wait().ok()
                    }
                    _ => None,
                };
                if let Some(status) = status {
                    let d = g.draining.remove(i);
                    tracing::info!(group = %name, n = d.inst.n, pid = d.inst.pid(), %status, "terminated");
                    record_exit(&self.launches, name, d.inst.n, status);
                } else {
                    i += 1;
                }
            }
        }
    }

    async fn describe(&self) -> anyhow::Result<Vec<AutoScalingGroup>> {
        let filter = aws_sdk_autoscaling::types::Filter::builder()
            .name("tag-key")
            .values(&self.opts.tag_key)
            .build();
        let mut out = vec![];
        let mut token = None;
        loop {
            let page = self
                .asg
                .describe_auto_scaling_groups()
                .filters(filter.clone())
                .set_next_token(token)
                .send()
                .await
                .context("DescribeAutoScalingGroups")?;
            out.extend(page.auto_scaling_groups().iter().cloned());
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        // The filter is the service's; check the tag here too so a server ignoring filters plays nothing extra.
        out.retain(|g| {
            g.tags()
                .iter()
                .any(|t| t.key() == Some(self.opts.tag_key.as_str()))
        });
        Ok(out)
    }

    /// The group's launch template version (an explicit number, `$Latest` or `$Default`, resolved now) and its
    /// user data. `None` for a group without a launch template (nothing dth would create).
    async fn resolve(
        &self,
        name: &str,
        group: &AutoScalingGroup,
    ) -> anyhow::Result<Option<(VersionKey, String)>> {
        let spec = group.launch_template().or_else(|| {
            group
                .mixed_instances_policy()
                .and_then(|m| m.launch_template())
                .and_then(|t| t.launch_template_specification())
        });
        let Some(spec) = spec else {
            tracing::debug!(group = %name, "no launch template: nothing to run");
            return Ok(None);
        };
        let version = spec.version().unwrap_or("$Default");
        let mut req = self
            .ec2
            .describe_launch_template_versions()
            .versions(version);
        req = match (spec.launch_template_id(), spec.launch_template_name()) {
            (Some(id), _) => req.launch_template_id(id),
            (None, Some(n)) => req.launch_template_name(n),
            (None, None) => bail!("launch template without an id or a name"),
        };
        let out = req.send().await.context("DescribeLaunchTemplateVersions")?;
        let v = out
            .launch_template_versions()
            .first()
            .ok_or_else(|| anyhow!("launch template version {version} not found"))?;
        let key = VersionKey {
            template_id: v
                .launch_template_id()
                .or(spec.launch_template_id())
                .or(spec.launch_template_name())
                .unwrap_or_default()
                .to_owned(),
            version: v.version_number().unwrap_or(0),
        };
        let user_data = v
            .launch_template_data()
            .and_then(|d| d.user_data())
            .unwrap_or_default()
            .to_owned();
        Ok(Some((key, user_data)))
    }

    /// Make `key` the group's spec if it is new and its user data is usable.
    fn adopt(&mut self, name: &str, key: VersionKey, user_data: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        if g.spec.as_ref().is_some_and(|s| s.key == key) || g.rejected.as_ref() == Some(&key) {
            return;
        }
        let parsed = userdata::parse(user_data)
            .map_err(anyhow::Error::from)
            .and_then(|spec| {
                let path = self.opts.log_dir.join(format!(
                    "{}-{}-v{}.json",
                    file_stem(name),
                    file_stem(&key.template_id),
                    key.version
                ));
                write_private(&path, &serde_json::to_vec_pretty(&spec.config)?)?;
                Ok((spec, path))
            });
        match parsed {
            Ok((spec, config)) => {
                tracing::info!(group = %name, version = %key, role = spec.role.binary(), args = ?spec.args,
                    image = %spec.image, "launch template version in use");
                g.spec = Some(Spec {
                    key,
                    role: spec.role,
                    args: spec.args,
                    config,
                });
                g.rejected = None;
            }
            Err(e) => {
                tracing::error!(group = %name, version = %key,
                    "user data not usable, launching nothing from it: {e:#}");
                g.rejected = Some(key);
            }
        }
    }

    fn reconcile(&mut self, name: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        let now = Instant::now();
        // Judge the exits now that the group's capacity after them is known.
        for (inst, status) in std::mem::take(&mut g.exits) {
            if status.success() && g.desired == 0 {
                tracing::info!(group = %name, n = inst.n, pid = inst.pid(),
                    "exited 0 and the group is now at 0: the run is over, not replacing");
                continue;
            }
            let (first, max) = self.opts.backoff;
            // A process that ran a good while was healthy: start over from the shortest wait.
            let wait = if now.duration_since(inst.started) >= max {
                first
            } else {
                g.backoff.unwrap_or(first)
            };
            g.backoff = Some((wait * 2).min(max));
            g.not_before = Some(now + wait);
            tracing::warn!(group = %name, n = inst.n, pid = inst.pid(), %status, desired = g.desired,
                "exited while the group still wants it: replacing in {wait:?}");
        }
        let current = g.spec.as_ref().map(|s| s.key.clone());
        let view: Vec<(bool, bool)> = g
            .running
            .iter()
            .map(|i| {
                (
                    Some(&i.key) == current.as_ref(),
                    now.duration_since(i.started) >= self.opts.poll,
                )
            })
            .collect();
        let waiting = g.not_before.is_some_and(|t| now < t);
        let d = decide(g.desired, &view, g.spec.is_some() && !waiting);
        if g.spec.is_none() && g.desired > view.len() && g.rejected.is_none() {
            tracing::debug!(group = %name, "no usable launch template version yet");
        }
        // Terminate first (indexes refer to the list before any start), newest-first order kept.
        let mut terminate = d.terminate;
        terminate.sort_unstable_by(|a, b| b.cmp(a));
        terminate.dedup();
        for i in terminate {
            let inst = g.running.remove(i);
            let why = if Some(&inst.key) == current.as_ref() {
                "desired capacity lowered"
            } else {
                "instance refresh: the group now launches another template version"
            };
            tracing::info!(group = %name, n = inst.n, pid = inst.pid(), version = %inst.key, "{why}: SIGTERM");
            if let Err(e) = signal(inst.pid(), rustix::process::Signal::TERM) {
                tracing::warn!(group = %name, pid = inst.pid(), "SIGTERM: {e}");
            }
            g.draining.push(Draining {
                inst,
                kill_at: now + self.opts.grace,
            });
        }
        if d.start > 0 {
            if let Some(spec) = g.spec.clone() {
                for _ in 0..d.start {
                    g.next_n += 1;
                    let n = g.next_n;
                    match start(&self.opts, self.setpriv.as_deref(), name, n, &spec) {
                        Ok(child) => {
                            let inst = Instance {
                                child,
                                n,
                                key: spec.key.clone(),
                                started: now,
                            };
                            let log = self
                                .opts
                                .log_dir
                                .join(format!("{}-{n}.log", file_stem(name)));
                            tracing::info!(group = %name, n, pid = inst.pid(), role = spec.role.binary(),
                                version = %spec.key, log = %log.display(), desired = g.desired, "launched");
                            lock(&self.launches).push(Launch {
                                group: name.to_owned(),
                                n,
                                pid: inst.pid(),
                                role: spec.role,
                                template_id: spec.key.template_id.clone(),
                                template_version: spec.key.version,
                                log,
                                started: now,
                                ended: None,
                            });
                            g.running.push(inst);
                        }
                        Err(e) => {
                            let (first, max) = self.opts.backoff;
                            let wait = g.backoff.unwrap_or(first);
                            g.backoff = Some((wait * 2).min(max));
                            g.not_before = Some(now + wait);
                            tracing::error!(group = %name, "could not start {}: {e:#}; retrying in {wait:?}",
                                spec.role.binary());
                            break;
                        }
                    }
                }
            }
        }
    }

    /// A group that is no longer listed (deleted, or its tag removed): terminate its processes, and drop it
    /// once they are gone.
    fn forget(&mut self, name: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        let now = Instant::now();
        g.exits.clear();
        for inst in g.running.drain(..) {
            tracing::info!(group = %name, n = inst.n, pid = inst.pid(), "group gone: SIGTERM");
            let _ = signal(inst.pid(), rustix::process::Signal::TERM);
            g.draining.push(Draining {
                inst,
                kill_at: now + self.opts.grace,
            });
        }
        if g.draining.is_empty() {
            tracing::info!(group = %name, "group gone");
            self.groups.remove(name);
        }
    }

    /// SIGTERM everything, then wait (SIGKILL after the grace period).
    async fn shutdown(&mut self) {
        let now = Instant::now();
        let mut count = 0;
        for (name, g) in &mut self.groups {
            for inst in g.running.drain(..) {
                tracing::info!(group = %name, n = inst.n, pid = inst.pid(), "stand-in stopping: SIGTERM");
                let _ = signal(inst.pid(), rustix::process::Signal::TERM);
                g.draining.push(Draining {
                    inst,
                    kill_at: now + self.opts.grace,
                });
                count += 1;
            }
            // Already exited but not yet judged: recorded, nothing more to do.
            g.exits.clear();
        }
        while self.groups.values().any(|g| !g.draining.is_empty()) {
            self.reap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tracing::info!(stopped = count, "ec2 stand-in stopped");
    }
}

fn record_exit(launches: &Launches, group: &str, n: u32, status: ExitStatus) {
    if let Some(l) = lock(launches)
        .iter_mut()
        .find(|l| l.group == group && l.n == n)
    {
        l.ended = Some((Instant::now(), status));
    }
}

/// Write `bytes` to a file only the owner can read: the job config names secrets and queues.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    // `mode` applies only when the file is created; an older file keeps its bits unless set again.
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    f.write_all(bytes)?;
    Ok(())
}

/// Fork one instance's process: `<bin-dir>/<role> --config <job.json> <args...>`.
fn start(
    opts: &Options,
    setpriv: Option<&Path>,
    group: &str,
    n: u32,
    spec: &Spec,
) -> anyhow::Result<Child> {
    let bin = opts.bin_dir.join(spec.role.binary());
    let log_path = opts.log_dir.join(format!("{}-{n}.log", file_stem(group)));
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = match setpriv {
        // The kernel kills the process if the stand-in's thread dies without stopping it.
        Some(sp) => {
            let mut c = Command::new(sp);
            c.args(["--pdeathsig", "KILL", "--"]).arg(&bin);
            c
        }
        None => Command::new(&bin),
    };
    cmd.arg("--config")
        .arg(&spec.config)
        .args(&spec.args)
        .env_clear()
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        // What the user data's `docker run` hands the container: its instance and group.
        .env("DTH_INSTANCE_ID", format!("i-standin{n:09}"))
        .env("DTH_AUTO_SCALING_GROUP", group)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a Ctrl-C at the stand-in's terminal is the stand-in's to handle (it then
        // SIGTERMs its instances), not a signal every instance gets at once.
        .process_group(0);
    cmd.spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

/// What [`fire_schedule`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub action: String,
    pub min: Option<i32>,
    pub max: Option<i32>,
    pub desired: Option<i32>,
}

/// Play a scheduled action firing: apply the named action of `asg` (or its first) — min / max / desired, as
/// set on the action — to the group.
pub async fn fire_schedule(
    client: &aws_sdk_autoscaling::Client,
    asg: &str,
    action: Option<&str>,
) -> anyhow::Result<Fired> {
    let mut req = client
        .describe_scheduled_actions()
        .auto_scaling_group_name(asg);
    if let Some(a) = action {
        req = req.scheduled_action_names(a);
    }
    let out = req.send().await.context("DescribeScheduledActions")?;
    let found = out.scheduled_update_group_actions().iter().find(|a| {
        a.auto_scaling_group_name() == Some(asg)
            && action.is_none_or(|name| a.scheduled_action_name() == Some(name))
    });
    let Some(a) = found else {
        bail!(
            "Auto Scaling group {asg} has no scheduled action{}",
            action.map(|a| format!(" named {a}")).unwrap_or_default()
        );
    };
    let fired = Fired {
        action: a.scheduled_action_name().unwrap_or_default().to_owned(),
        min: a.min_size(),
        max: a.max_size(),
        desired: a.desired_capacity(),
    };
    if fired.min.is_some() || fired.max.is_some() {
        // One call, so the new desired capacity is checked against the new bounds, as a real action's is.
        client
            .update_auto_scaling_group()
            .auto_scaling_group_name(asg)
            .set_min_size(fired.min)
            .set_max_size(fired.max)
            .set_desired_capacity(fired.desired)
            .send()
            .await
            .context("UpdateAutoScalingGroup")?;
    } else if let Some(d) = fired.desired {
        client
            .set_desired_capacity()
            .auto_scaling_group_name(asg)
            .desired_capacity(d)
            .honor_cooldown(false)
            .send()
            .await
            .context("SetDesiredCapacity")?;
    } else {
        bail!("scheduled action {} of {asg} sets nothing", fired.action);
    }
    tracing::info!(group = asg, action = %fired.action, min = ?fired.min, max = ?fired.max,
        desired = ?fired.desired, "scheduled action fired");
    Ok(fired)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_up_to_desired() {
        assert_eq!(
            decide(2, &[], true),
            Decision {
                start: 2,
                terminate: vec![]
            }
        );
        assert_eq!(decide(2, &[(true, true)], true).start, 1);
        // Backing off: nothing starts.
        assert_eq!(decide(2, &[(true, true)], false), Decision::default());
    }

    #[test]
    fn scales_in_newest_first() {
        let d = decide(1, &[(true, true), (true, true), (true, false)], true);
        assert_eq!(d.start, 0);
        assert_eq!(d.terminate, vec![2, 1]);
        assert_eq!(decide(0, &[(true, true)], true).terminate, vec![0]);
    }

    #[test]
    fn refresh_starts_new_then_retires_old_once_in_service() {
        // Old version running, none of the new: start two, keep the old.
        let d = decide(2, &[(false, true), (false, true)], true);
        assert_eq!(d.start, 2);
        assert!(d.terminate.is_empty());
        // New ones started but not in service yet: keep the old.
        let d = decide(
            2,
            &[(false, true), (false, true), (true, false), (true, false)],
            true,
        );
        assert_eq!(d, Decision::default());
        // In service: the old go.
        let d = decide(
            2,
            &[(false, true), (false, true), (true, true), (true, true)],
            true,
        );
        assert_eq!(d.terminate, vec![0, 1]);
        // Nothing wanted: everything goes at once.
        assert_eq!(
            decide(0, &[(false, true), (true, true)], true).terminate,
            vec![1, 0]
        );
    }

    #[test]
    fn file_stems_are_safe() {
        assert_eq!(file_stem("dth-abc_1.x"), "dth-abc_1.x");
        assert_eq!(file_stem("a/b c:d"), "a_b_c_d");
    }
}

//! A stand-in for EC2 and the instance side of Auto Scaling: moto stores Auto Scaling groups and launch
//! templates but runs nothing, so this plays the instances.
//!
//! For every group carrying the transfer tag it keeps DesiredCapacity instances ([`crate::machine`]), each
//! booted from the group's launch template the way EC2 boots one: a machine of the template's instance type's
//! platform (t4g → arm64, whose binaries run under qemu) runs the template's user data as cloud-init would,
//! then the systemd units it installed — which pull the image from its registry and run its binaries. Nothing
//! here parses what the user data means: restarts, unhealthy marking, stop timeouts and the lifecycle hook's
//! use are whatever the user data and its units set up. It behaves like an Auto Scaling group where that
//! matters to dth:
//! - desired capacity lowered → the newest surplus instances terminate; with a termination lifecycle hook on
//!   the group they wait in `Terminating:Wait` (their metadata says `Terminated`) until the action is
//!   completed or the hook's heartbeat timeout passes, then shut down (units stopped, power off);
//! - the group's launch template version changes (an explicit number, or what `$Latest` / `$Default`
//!   resolve to) → instances of the new version start and, once in service, the old ones terminate (an
//!   instance refresh);
//! - an instance marked Unhealthy (SetInstanceHealth) terminates and is replaced.
//!
//! moto has no CompleteLifecycleAction and knows nothing of these instances, so the stand-in also serves the
//! Auto Scaling API ([`Ec2StandIn::autoscaling_endpoint`]): CompleteLifecycleAction,
//! RecordLifecycleActionHeartbeat, SetInstanceHealth and TerminateInstanceInAutoScalingGroup (keeping the
//! group's size) for its instances are answered there, every other call is passed on to moto unchanged.
//! Point the provider's `autoscaling` endpoint at it.
//!
//! [`fire_schedule`] plays the other thing moto never does: a scheduled action firing.
//!
//! Instances never outlive the stand-in: each is a PID namespace whose holder gets SIGKILL from the kernel
//! when the stand-in's thread dies, and they are shut down when it stops.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use aws_sdk_autoscaling::types::AutoScalingGroup;
use base64::Engine;
use dth_core::userdata::{self, Role};
use tokio_util::sync::CancellationToken;

use crate::http::{self, Request, Response};
use crate::machine::{self, Boot, Credentials, Ctl};

/// The tag every group of a dth transfer carries (its value is the transfer's id).
pub const DEFAULT_TAG_KEY: &str = "dth:transfer";
/// The termination transition of a lifecycle hook.
const TERMINATING: &str = "autoscaling:EC2_INSTANCE_TERMINATING";

#[derive(Debug, Clone)]
pub struct Options {
    /// The Auto Scaling and EC2 endpoint (moto serves both on one port).
    pub endpoint: String,
    /// The control-plane region: where the groups and templates live.
    pub region: String,
    /// Instance roots (removed when they terminate) and consoles (`<group>-<n>.log`, kept).
    pub log_dir: PathBuf,
    /// Only groups with this tag key are played.
    pub tag_key: String,
    /// Where the stand-in's Auto Scaling API listens (port 0: any free port).
    pub listen: SocketAddr,
    /// The instance profile's keys: what the instances' metadata service hands out, and the stand-in's own
    /// identity towards moto. None: the stand-in uses the SDK's default chain and instances get no
    /// credentials.
    pub credentials: Option<Credentials>,
    /// The ECR API endpoint instances use (`aws ecr get-login-password`); default: the `endpoint`.
    pub ecr_endpoint: Option<String>,
    /// How often the groups are read.
    pub poll: Duration,
}

impl Options {
    /// Defaults: the `dth:transfer` tag, the Auto Scaling API on any free port, 1 s polls, and this process's
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN` as the instance profile.
    pub fn new(
        endpoint: impl Into<String>,
        region: impl Into<String>,
        log_dir: impl Into<PathBuf>,
    ) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let credentials = match (var("AWS_ACCESS_KEY_ID"), var("AWS_SECRET_ACCESS_KEY")) {
            (Some(id), Some(secret)) => Some(Credentials {
                access_key_id: id,
                secret_access_key: secret,
                session_token: var("AWS_SESSION_TOKEN"),
            }),
            _ => None,
        };
        Self {
            endpoint: endpoint.into(),
            region: region.into(),
            log_dir: log_dir.into(),
            tag_key: DEFAULT_TAG_KEY.into(),
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            credentials,
            ecr_endpoint: None,
            poll: Duration::from_secs(1),
        }
    }

    /// Set the instance profile's keys.
    pub fn credentials(mut self, id: &str, secret: &str) -> Self {
        self.credentials = Some(Credentials {
            access_key_id: id.into(),
            secret_access_key: secret.into(),
            session_token: None,
        });
        self
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

/// One instance the stand-in launched: what the tests look at.
#[derive(Debug, Clone)]
pub struct Launch {
    pub group: String,
    /// 1, 2, ... per group: the `<group>-<n>.log` number.
    pub n: u32,
    pub instance_id: String,
    /// The role its user data names (`# dth:role=`), when it is dth's.
    pub role: Option<Role>,
    /// `amd64` or `arm64`, from the launch template's instance type.
    pub arch: &'static str,
    pub template_id: String,
    pub template_version: i64,
    /// Its console: cloud-init's and every unit's output.
    pub log: PathBuf,
    pub started: Instant,
    /// Set once the instance is off.
    pub ended: Option<Instant>,
}

impl Launch {
    pub fn running(&self) -> bool {
        self.ended.is_none()
    }

    /// The console so far.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Every launch's console, headed by its group, number and instance id: for a failed test's message.
pub fn logs(launches: &[Launch]) -> String {
    launches
        .iter()
        .map(|l| {
            format!(
                "--- {}-{} ({}, {}, {}):\n{}",
                l.group,
                l.n,
                l.instance_id,
                l.arch,
                if l.running() { "running" } else { "off" },
                l.console()
            )
        })
        .collect()
}

type Launches = Arc<Mutex<Vec<Launch>>>;

fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding the lock leaves the data itself intact.
    l.lock().unwrap_or_else(|e| e.into_inner())
}

/// The stand-in's instances by id, for its Auto Scaling API: (group, control).
type Registry = Arc<Mutex<BTreeMap<String, (String, Arc<Ctl>)>>>;

/// A running stand-in on its own thread; dropping it (or [`Ec2StandIn::stop`]) powers every instance off and
/// waits for them.
pub struct Ec2StandIn {
    stop: CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
    launches: Launches,
    autoscaling: String,
}

impl Ec2StandIn {
    /// Start playing EC2 for the groups of `opts.endpoint`. The loop runs on a dedicated thread with its own
    /// runtime: every instance is forked from that one thread, which lives exactly as long as the stand-in
    /// (the parent-death signal is tied to the forking thread, not the process).
    pub fn spawn(opts: Options) -> std::io::Result<Self> {
        let listener = std::net::TcpListener::bind(opts.listen)?;
        listener.set_nonblocking(true)?;
        let autoscaling = format!("http://{}", listener.local_addr()?);
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
                    let run = async {
                        let listener = tokio::net::TcpListener::from_std(listener)?;
                        run_recording(opts, listener, stop, launches).await
                    };
                    if let Err(e) = rt.block_on(run) {
                        tracing::error!("ec2 stand-in stopped: {e:#}");
                    }
                })?
        };
        Ok(Self {
            stop,
            thread: Some(thread),
            launches,
            autoscaling,
        })
    }

    /// The stand-in's Auto Scaling API (moto's, plus the instance calls moto lacks).
    pub fn autoscaling_endpoint(&self) -> &str {
        &self.autoscaling
    }

    /// Every instance launched so far, in launch order.
    pub fn launches(&self) -> Vec<Launch> {
        lock(&self.launches).clone()
    }

    /// The instances launched for one group, in launch order.
    pub fn launches_of(&self, group: &str) -> Vec<Launch> {
        lock(&self.launches)
            .iter()
            .filter(|l| l.group == group)
            .cloned()
            .collect()
    }

    /// The instances of one group not yet off.
    pub fn running(&self, group: &str) -> Vec<Launch> {
        self.launches_of(group)
            .into_iter()
            .filter(Launch::running)
            .collect()
    }

    /// Power every instance off (units stopped as systemd stops them) and end the loop.
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

/// Run the stand-in on the current thread until `stop` is cancelled (the binary's `run`), its Auto Scaling
/// API on `listener`.
pub async fn run(
    opts: Options,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    run_recording(opts, listener, stop, Launches::default()).await
}

/// `http://host:port` → the address to connect to.
fn socket_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let hostport = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow!("{url}: only http:// endpoints can be served through"))?
        .split('/')
        .next()
        .unwrap_or("");
    hostport
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| anyhow!("{url}: no address"))
}

async fn run_recording(
    opts: Options,
    listener: tokio::net::TcpListener,
    stop: CancellationToken,
    launches: Launches,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&opts.log_dir)
        .with_context(|| format!("creating {}", opts.log_dir.display()))?;
    let keys = opts.credentials.as_ref().map(|c| {
        (
            c.access_key_id.clone(),
            c.secret_access_key.clone(),
            c.session_token.clone(),
        )
    });
    let (asg, ec2) = clients(&opts.endpoint, &opts.region, keys).await;
    let registry = Registry::default();
    let moto = socket_addr(&opts.endpoint)?;
    let autoscaling = format!("http://{}", listener.local_addr()?);
    tokio::spawn(http::serve(
        listener,
        {
            let registry = registry.clone();
            move |req| {
                let registry = registry.clone();
                async move { autoscaling_api(req, &registry, moto).await }
            }
        },
        stop.clone(),
    ));
    tracing::info!(
        endpoint = %opts.endpoint, region = %opts.region, tag_key = %opts.tag_key, %autoscaling,
        "ec2 stand-in: playing the instances of tagged Auto Scaling groups"
    );
    let mut machine_env = BTreeMap::new();
    machine_env.insert("AWS_ENDPOINT_URL_AUTO_SCALING".to_owned(), autoscaling);
    machine_env.insert(
        "AWS_ENDPOINT_URL_ECR".to_owned(),
        opts.ecr_endpoint.clone().unwrap_or(opts.endpoint.clone()),
    );
    let mut s = Supervisor {
        opts,
        asg,
        ec2,
        groups: BTreeMap::new(),
        launches,
        registry,
        machine_env,
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            // Dropping a tick midway is safe: instances are recorded the moment they are launched, and the
            // only awaits are the reads of groups, hooks and templates.
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

/// The Auto Scaling API as the instances and the provider see it: the instance-level calls moto lacks, for
/// the stand-in's instances; everything else passed on to moto.
async fn autoscaling_api(req: Request, registry: &Registry, moto: SocketAddr) -> Response {
    let params: BTreeMap<String, String> = if req.method == "POST" {
        http::form(&req.body).into_iter().collect()
    } else {
        BTreeMap::new()
    };
    let param = |k: &str| params.get(k).map(String::as_str).unwrap_or("");
    let action = param("Action");
    let instance = param("InstanceId");
    let known = lock(registry).get(instance).cloned();
    let ok = |action: &str| {
        Response::new(
            200,
            "text/xml",
            format!(
                "<{action}Response xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
                 <{action}Result/><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata>\
                 </{action}Response>",
                request_id()
            ),
        )
    };
    match (action, known) {
        ("CompleteLifecycleAction" | "RecordLifecycleActionHeartbeat", found) => {
            let hook = param("LifecycleHookName");
            let waiting = found.filter(|(g, _)| g == param("AutoScalingGroupName"));
            let accepted = match (&waiting, action) {
                (Some((_, ctl)), "CompleteLifecycleAction") => ctl.complete_lifecycle_action(hook),
                (Some((_, ctl)), _) => ctl.terminating(),
                (None, _) => false,
            };
            if accepted {
                tracing::info!(%instance, %hook, "{action}");
                ok(action)
            } else {
                validation_error(&format!(
                    "No active Lifecycle Action found with instance ID {instance}"
                ))
            }
        }
        ("TerminateInstanceInAutoScalingGroup", Some((group, ctl))) => {
            if param("ShouldDecrementDesiredCapacity") == "true" {
                return validation_error(
                    "the EC2 stand-in terminates instances with ShouldDecrementDesiredCapacity=false only",
                );
            }
            tracing::info!(%group, %instance, "TerminateInstanceInAutoScalingGroup: to be replaced");
            ctl.pick_for_termination();
            ok(action)
        }
        ("SetInstanceHealth", Some((group, ctl))) => {
            if param("HealthStatus") == "Unhealthy" {
                tracing::warn!(%group, %instance, "SetInstanceHealth Unhealthy: to be replaced");
                ctl.set_unhealthy();
            }
            ok(action)
        }
        _ => match http::forward(moto, &req).await {
            Ok(r) => r,
            Err(e) => Response::text(502, format!("moto: {e:#}")),
        },
    }
}

fn request_id() -> String {
    format!(
        "{:08x}-standin-{:012x}",
        fastrand::u32(..),
        fastrand::u64(..) >> 16
    )
}

fn validation_error(message: &str) -> Response {
    Response::new(
        400,
        "text/xml",
        format!(
            "<ErrorResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\"><Error>\
             <Type>Sender</Type><Code>ValidationError</Code><Message>{message}</Message></Error>\
             <RequestId>{}</RequestId></ErrorResponse>",
            request_id()
        ),
    )
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

/// What a version launches.
#[derive(Debug, Clone)]
struct Spec {
    key: VersionKey,
    user_data: String,
    role: Option<Role>,
    arch: &'static str,
}

/// One instance of a group.
struct Machine {
    ctl: Arc<Ctl>,
    n: u32,
    key: VersionKey,
    task: tokio::task::JoinHandle<()>,
}

#[derive(Default)]
struct Group {
    desired: usize,
    /// The version instances are launched from; kept when a newer version cannot be used.
    spec: Option<Spec>,
    /// A version that cannot be launched, so the error is logged once, not every second.
    rejected: Option<VersionKey>,
    /// The group's termination lifecycle hook: name and heartbeat timeout.
    hook: Option<(String, Duration)>,
    running: Vec<Machine>,
    /// Terminating: waiting on the hook, or shutting down.
    draining: Vec<Machine>,
    next_n: u32,
    /// Whether the group was in the last listing; a group that vanished is drained and forgotten.
    listed: bool,
}

struct Supervisor {
    opts: Options,
    asg: aws_sdk_autoscaling::Client,
    ec2: aws_sdk_ec2::Client,
    groups: BTreeMap<String, Group>,
    launches: Launches,
    registry: Registry,
    /// What the network gives every instance (the AWS endpoints of its CLI).
    machine_env: BTreeMap<String, String>,
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
/// version and whether it is in service (a unit's main process runs).
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

impl Supervisor {
    async fn tick(&mut self) {
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
            let hook = self.hook(&name).await;
            let entry = self.groups.entry(name.clone()).or_default();
            entry.listed = true;
            if entry.desired != desired {
                tracing::info!(group = %name, from = entry.desired, to = desired, "desired capacity changed");
                entry.desired = desired;
            }
            match hook {
                Ok(h) => entry.hook = h,
                Err(e) => tracing::warn!(group = %name, "reading its lifecycle hooks: {e:#}"),
            }
            match resolved {
                Ok(Some(spec)) => self.adopt(&name, spec),
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

    /// Instances that are off are recorded and dropped (one that went off by itself is replaced by its
    /// group).
    fn reap(&mut self) {
        for (name, g) in &mut self.groups {
            let (off, running): (Vec<Machine>, Vec<Machine>) =
                g.running.drain(..).partition(|m| m.ctl.off());
            g.running = running;
            for m in off {
                tracing::warn!(group = %name, instance = %m.ctl.id, "instance went off by itself");
                g.draining.push(m);
            }
            let (off, draining): (Vec<Machine>, Vec<Machine>) =
                g.draining.drain(..).partition(|m| m.ctl.off());
            g.draining = draining;
            for m in off {
                tracing::info!(group = %name, n = m.n, instance = %m.ctl.id, "terminated");
                lock(&self.registry).remove(&m.ctl.id);
                if let Some(l) = lock(&self.launches)
                    .iter_mut()
                    .find(|l| l.instance_id == m.ctl.id)
                {
                    l.ended = Some(Instant::now());
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

    /// The group's termination lifecycle hook, if it has one.
    async fn hook(&self, name: &str) -> anyhow::Result<Option<(String, Duration)>> {
        let out = self
            .asg
            .describe_lifecycle_hooks()
            .auto_scaling_group_name(name)
            .send()
            .await
            .context("DescribeLifecycleHooks")?;
        Ok(out
            .lifecycle_hooks()
            .iter()
            .find(|h| h.lifecycle_transition() == Some(TERMINATING))
            .and_then(|h| {
                let timeout = h.heartbeat_timeout().unwrap_or(3600);
                Some((
                    h.lifecycle_hook_name()?.to_owned(),
                    Duration::from_secs(u64::try_from(timeout).unwrap_or(3600)),
                ))
            }))
    }

    /// The group's launch template version (an explicit number, `$Latest` or `$Default`, resolved now): its
    /// user data and platform. `None` for a group without a launch template (nothing dth would create).
    async fn resolve(&self, name: &str, group: &AutoScalingGroup) -> anyhow::Result<Option<Spec>> {
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
        let data = v.launch_template_data();
        let instance_type = data
            .and_then(|d| d.instance_type())
            .map(|t| t.as_str().to_owned())
            .unwrap_or_default();
        let raw = data.and_then(|d| d.user_data()).unwrap_or_default();
        let user_data = base64::engine::general_purpose::STANDARD
            .decode(raw.trim())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .unwrap_or_else(|| raw.to_owned());
        Ok(Some(Spec {
            key,
            role: userdata::parse(&user_data).ok().map(|s| s.role),
            // The image platform's name for it (OCI says amd64 where AMIs say x86_64).
            arch: match dth_core::fleet::architecture_of(&instance_type) {
                _ if instance_type.is_empty() => "",
                "arm64" => "arm64",
                _ => "amd64",
            },
            user_data,
        }))
    }

    /// Make `spec` the group's if it is new and launchable.
    fn adopt(&mut self, name: &str, spec: Spec) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        if g.spec.as_ref().is_some_and(|s| s.key == spec.key)
            || g.rejected.as_ref() == Some(&spec.key)
        {
            return;
        }
        if spec.arch.is_empty() || !spec.user_data.starts_with("#!") {
            tracing::error!(group = %name, version = %spec.key,
                "launch template version has no instance type or no user data script: launching nothing from it");
            g.rejected = Some(spec.key);
            return;
        }
        tracing::info!(group = %name, version = %spec.key, role = ?spec.role, arch = spec.arch,
            "launch template version in use");
        g.spec = Some(spec);
        g.rejected = None;
    }

    fn reconcile(&mut self, name: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        // Unhealthy or picked instances go first (they were marked before any capacity change that follows
        // from them was made, so they are never counted as in service against it).
        let (retire, keep): (Vec<Machine>, Vec<Machine>) =
            g.running.drain(..).partition(|m| m.ctl.to_retire());
        g.running = keep;
        for m in retire {
            tracing::warn!(group = %name, instance = %m.ctl.id, unhealthy = m.ctl.unhealthy(), "terminating");
            m.ctl.terminate(g.hook.clone());
            g.draining.push(m);
        }
        let current = g.spec.as_ref().map(|s| s.key.clone());
        let view: Vec<(bool, bool)> = g
            .running
            .iter()
            .map(|m| (Some(&m.key) == current.as_ref(), m.ctl.serving()))
            .collect();
        let d = decide(g.desired, &view, g.spec.is_some());
        // Terminate first (indexes refer to the list before any start), newest-first order kept.
        let mut terminate = d.terminate;
        terminate.sort_unstable_by(|a, b| b.cmp(a));
        terminate.dedup();
        for i in terminate {
            let m = g.running.remove(i);
            let why = if Some(&m.key) == current.as_ref() {
                "desired capacity lowered"
            } else {
                "instance refresh: the group now launches another template version"
            };
            tracing::info!(group = %name, n = m.n, instance = %m.ctl.id, version = %m.key, "{why}: terminating");
            m.ctl.terminate(g.hook.clone());
            g.draining.push(m);
        }
        let Some(spec) = g.spec.clone() else {
            return;
        };
        for _ in 0..d.start {
            g.next_n += 1;
            let n = g.next_n;
            let id = format!("i-{:017x}", fastrand::u64(..) >> 4);
            let stem = format!("{}-{n}", file_stem(name));
            let boot = Boot {
                id: id.clone(),
                root: self.opts.log_dir.join(format!("{stem}.root")),
                console: self.opts.log_dir.join(format!("{stem}.log")),
                user_data: spec.user_data.clone(),
                arch: spec.arch,
                env: self.machine_env.clone(),
                credentials: self.opts.credentials.clone(),
                role: "dth-instance".into(),
            };
            let ctl = Ctl::new(&id);
            lock(&self.registry).insert(id.clone(), (name.to_owned(), ctl.clone()));
            tracing::info!(group = %name, n, instance = %id, arch = spec.arch, version = %spec.key,
                console = %boot.console.display(), desired = g.desired, "launched");
            lock(&self.launches).push(Launch {
                group: name.to_owned(),
                n,
                instance_id: id,
                role: spec.role,
                arch: spec.arch,
                template_id: spec.key.template_id.clone(),
                template_version: spec.key.version,
                log: boot.console.clone(),
                started: Instant::now(),
                ended: None,
            });
            let task = tokio::spawn(machine::run(boot, ctl.clone()));
            g.running.push(Machine {
                ctl,
                n,
                key: spec.key.clone(),
                task,
            });
        }
    }

    /// A group that is no longer listed (deleted, or its tag removed): its instances terminate (no hook
    /// waits on a deleted group), and it is dropped once they are off.
    fn forget(&mut self, name: &str) {
        let Some(g) = self.groups.get_mut(name) else {
            return;
        };
        for m in g.running.drain(..) {
            tracing::info!(group = %name, n = m.n, instance = %m.ctl.id, "group gone: terminating");
            m.ctl.power_off();
            g.draining.push(m);
        }
        if g.draining.is_empty() {
            tracing::info!(group = %name, "group gone");
            self.groups.remove(name);
        }
    }

    /// Power every instance off and wait for them.
    async fn shutdown(&mut self) {
        let mut tasks = vec![];
        for (name, g) in &mut self.groups {
            for m in g.running.drain(..).chain(g.draining.drain(..)) {
                tracing::info!(group = %name, n = m.n, instance = %m.ctl.id, "stand-in stopping: power off");
                m.ctl.power_off();
                tasks.push(m.task);
            }
        }
        let count = tasks.len();
        for t in tasks {
            let _ = t.await;
        }
        self.reap();
        let now = Instant::now();
        for l in lock(&self.launches)
            .iter_mut()
            .filter(|l| l.ended.is_none())
        {
            l.ended = Some(now);
        }
        tracing::info!(stopped = count, "ec2 stand-in stopped");
    }
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
        // No launchable version: nothing starts.
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

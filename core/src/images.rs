//! Image transfers: container images from ECR or any registry into ECR, by the same `finder` and `worker` as
//! object transfers, on the same queue and ledger.
//!
//! - [`connect`]: the two registries of an [`ImageJobConfig`] and their ECR APIs — addresses (`registry`, or
//!   ECR's `<account>.dkr.ecr.<region>.amazonaws.com`, or the token's endpoint), and logins (ECR tokens from
//!   GetAuthorizationToken, a `{"username","password"}` secret, or anonymous).
//! - [`find`]: expand the selection (`repo:tag`, `repo@digest`, `repo:ALL_TAGS`, or every repository: ECR's
//!   DescribeRepositories / ListImages, a registry's `/v2/_catalog` and tag lists), resolve each tag to the
//!   digest it names, compare it with the destination's tag (`HEAD`, one request each side per tag: a run
//!   that finds nothing changed reads no manifest and no blob), create missing destination repositories, and
//!   enqueue one [`Job::Image`] per image that differs, pinned to the digest seen. The run is recorded in the
//!   ledger as an object run is ("objects" are images); an image the finder cannot resolve (a missing tag or
//!   repository, credentials refused) gets a FAILED row with the registry's error, and the others go on.
//! - [`ImageEngine`]: what a worker does with an image job: copy it by digest ([`ImageCopier`]), tag last.
//!
//! With `source.platforms`, the digest compared is the one the destination's tag will have (see
//! [`crate::registry::manifest`]): the selected child manifest's, or the derived index's, so a rerun that
//! finds nothing changed still enqueues nothing.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures::stream::{self, StreamExt};
use tokio::sync::Mutex;

use crate::aws::{self, ControlPlane};
use crate::config::ImageJobConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::finder::{new_run_id, Sink};
use crate::image_config::{ImageSelection, ImageSourceType};
use crate::job::{new_id, Job, JobImage};
use crate::ledger::{ImageRow, ObjectRecord, Status};
use crate::limit::{Limits, MemoryBudget};
use crate::registry::{
    Anonymous, CopyOptions, CopyReport, CredentialSource, ImageCopier, Manifest, Plan, Registry,
    RegistryAddress,
};
use crate::stats::{StatEvent, Stats};

/// An ECR registry's API: the client and the account (None: the credentials' own).
#[derive(Debug, Clone)]
pub struct EcrApi {
    pub client: aws_sdk_ecr::Client,
    pub registry_id: Option<String>,
}

/// Both ends of an image transfer.
#[derive(Debug, Clone)]
pub struct ImageSides {
    pub source: Registry,
    pub destination: Registry,
    /// The source's ECR API (source type `ecr`): repositories and images are listed through it.
    pub source_ecr: Option<EcrApi>,
    /// The destination's ECR API: repositories are created through it.
    pub destination_ecr: EcrApi,
}

/// The address of an ECR registry: `registry` when given, else from account and region, else the
/// authorization token's endpoint.
async fn ecr_address(
    field: &str,
    registry: Option<&str>,
    account: Option<&str>,
    region: &str,
    login: &aws::EcrLogin,
) -> Result<RegistryAddress> {
    if let Some(r) = registry {
        return RegistryAddress::parse(field, r);
    }
    if let Some(a) = account {
        return RegistryAddress::parse(field, &aws::ecr_registry_host(a, region));
    }
    let endpoint = login.proxy_endpoint().await?;
    RegistryAddress::parse(field, &endpoint)
}

/// The registries and ECR APIs of `cfg`; `limits` apply to every registry request.
pub async fn connect(
    cfg: &ImageJobConfig,
    cp: &ControlPlane,
    limits: Option<Arc<Limits>>,
) -> Result<ImageSides> {
    let endpoint = cfg.aws.endpoints.ecr.as_deref();
    let control_region = cp
        .sdk
        .region()
        .map(|r| r.to_string())
        .unwrap_or_else(|| "us-east-1".into());
    let s = &cfg.source;
    let (source, source_ecr) = match s.kind {
        ImageSourceType::Registry => {
            let address = RegistryAddress::parse(
                "source.registry",
                s.registry.as_deref().unwrap_or_default(),
            )?;
            let login: Arc<dyn CredentialSource> = match &s.credentials_secret_arn {
                Some(id) => Arc::new(aws::SecretLogin::new(cp.secrets.clone(), id)),
                None => Arc::new(Anonymous),
            };
            (Registry::new(address, login, limits.clone()), None)
        }
        ImageSourceType::Ecr => {
            let region = s.region.clone().unwrap_or_else(|| control_region.clone());
            let client = aws::ecr_client(
                cp,
                endpoint,
                Some(&region),
                s.credentials_secret_arn.as_deref(),
            );
            let login = Arc::new(aws::EcrLogin::new(client.clone(), s.account_id.clone()));
            let address = ecr_address(
                "source.registry",
                s.registry.as_deref(),
                s.account_id.as_deref(),
                &region,
                &login,
            )
            .await?;
            (
                Registry::new(address, login, limits.clone()),
                Some(EcrApi {
                    client,
                    registry_id: s.account_id.clone(),
                }),
            )
        }
    };
    let d = &cfg.destination;
    let region = d.region.clone().unwrap_or(control_region);
    let client = aws::ecr_client(
        cp,
        endpoint,
        Some(&region),
        d.credentials_secret_arn.as_deref(),
    );
    let login = Arc::new(aws::EcrLogin::new(client.clone(), d.account_id.clone()));
    let address = ecr_address(
        "destination.registry",
        d.registry.as_deref(),
        d.account_id.as_deref(),
        &region,
        &login,
    )
    .await?;
    Ok(ImageSides {
        source,
        destination: Registry::new(address, login, limits),
        source_ecr,
        destination_ecr: EcrApi {
            client,
            registry_id: d.account_id.clone(),
        },
    })
}

/// The copy options an image transfer's config implies.
fn copy_options(cfg: &ImageJobConfig) -> CopyOptions {
    CopyOptions {
        platforms: cfg.source.platforms.clone(),
        blob_concurrency: cfg.worker.part_concurrency as usize,
        ..CopyOptions::default()
    }
}

/// An image the selection names, before it is compared.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Candidate {
    repository: String,
    tag: Option<String>,
    /// Known from the listing (ECR) or the selection (`repo@digest`); resolved from the tag otherwise.
    digest: Option<String>,
}

impl Candidate {
    fn key(&self) -> String {
        match (&self.tag, &self.digest) {
            (Some(t), _) => format!("{}:{t}", self.repository),
            (None, Some(d)) => format!("{}@{d}", self.repository),
            (None, None) => self.repository.clone(),
        }
    }
}

/// An image the finder could not look at, and why.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FindFailure {
    /// `repo:tag`, `repo@digest` or `repo:ALL_TAGS`.
    pub image: String,
    pub error: String,
}

/// What one image finder run found.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct ImageFinderReport {
    pub run: String,
    pub dry_run: bool,
    /// Images (tags, and untagged images) looked at.
    pub scanned: u64,
    /// Images that differ from the destination: one job each.
    pub to_move: u64,
    pub bytes_to_move: u64,
    pub up_to_date: u64,
    pub failed: u64,
    pub jobs: u64,
    /// Destination repositories created.
    pub repositories_created: Vec<String>,
    /// The first images that would move (dry run) or were enqueued.
    pub sample_images: Vec<String>,
    pub failures: Vec<FindFailure>,
    /// Requests to the source and the destination registry.
    pub source_requests: u64,
    pub destination_requests: u64,
    /// SQS and DynamoDB requests: `requests.sqs + requests.dynamodb`.
    pub control_plane_calls: u64,
    /// Every AWS request sent, per service (retries included; registry requests are counted above).
    pub requests: crate::requests::Requests,
    pub seconds: f64,
}

/// A repository's image as listed: (tag, digest), the digest known only from ECR's lists.
type Listed = (Option<String>, Option<String>);

/// Expand the selection into candidates; a repository that cannot be listed is a failure, not the run's end
/// (the catalog itself is: without it there is nothing to do).
async fn candidates(
    cfg: &ImageJobConfig,
    sides: &ImageSides,
) -> Result<(Vec<Candidate>, Vec<FindFailure>)> {
    let s = &cfg.source;
    let mut out = Vec::new();
    let mut failures = Vec::new();
    let mut all_tags: Vec<String> = Vec::new();
    if s.all {
        all_tags = match &sides.source_ecr {
            Some(ecr) => aws::ecr_repositories(&ecr.client, ecr.registry_id.as_deref()).await?,
            None => sides.source.catalog().await?,
        };
    } else {
        for (i, text) in s.images.iter().enumerate() {
            let sel = ImageSelection::parse(text)
                .map_err(|m| Error::config(&format!("source.images[{i}]"), m))?;
            match sel {
                ImageSelection::Tag { repository, tag } => out.push(Candidate {
                    repository,
                    tag: Some(tag),
                    digest: None,
                }),
                ImageSelection::Digest { repository, digest } => out.push(Candidate {
                    repository,
                    tag: None,
                    digest: Some(digest),
                }),
                ImageSelection::AllTags { repository } => all_tags.push(repository),
            }
        }
    }
    // Untagged images are listed only with `all` (an untagged image has no name to select it by).
    let untagged = s.all && s.include_untagged;
    let listed: Vec<(String, Result<Vec<Listed>>)> =
        stream::iter(all_tags.into_iter().map(|repo| async move {
            let r = match &sides.source_ecr {
                Some(ecr) => {
                    aws::ecr_images(&ecr.client, ecr.registry_id.as_deref(), &repo, untagged)
                        .await
                        .map(|v| v.into_iter().map(|(t, d)| (t, Some(d))).collect())
                }
                None => sides
                    .source
                    .tags(&repo)
                    .await
                    .map(|v| v.into_iter().map(|t| (Some(t), None)).collect()),
            };
            (repo, r)
        }))
        .buffer_unordered(cfg.finder.parallelism as usize)
        .collect()
        .await;
    for (repository, r) in listed {
        match r {
            Ok(images) => out.extend(images.into_iter().map(|(tag, digest)| Candidate {
                repository: repository.clone(),
                tag,
                digest,
            })),
            Err(e) => failures.push(FindFailure {
                image: format!("{repository}:{}", crate::image_config::ALL_TAGS),
                error: e.to_string(),
            }),
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.key() == b.key());
    Ok((out, failures))
}

enum Examined {
    UpToDate,
    Move(JobImage),
}

struct Examiner<'a> {
    cfg: &'a ImageJobConfig,
    sides: &'a ImageSides,
    copier: ImageCopier,
    dry_run: bool,
    /// Destination repositories known to exist (created or checked by this run).
    ensured: Mutex<HashSet<String>>,
    created: Mutex<Vec<String>>,
}

impl Examiner<'_> {
    /// Compare one candidate with the destination.
    async fn examine(&self, c: &Candidate) -> Result<Examined> {
        let src = &self.sides.source;
        let digest = match (&c.digest, &c.tag) {
            // Listed by ECR (digest and tag together) or selected by digest.
            (Some(d), Some(_)) => d.clone(),
            (Some(d), None) => match src.head_manifest(&c.repository, d).await? {
                Some(_) => d.clone(),
                None => return Err(missing(src, &c.repository, d).await),
            },
            (None, Some(t)) => match src.head_manifest(&c.repository, t).await? {
                Some(h) => h.digest,
                None => return Err(missing(src, &c.repository, t).await),
            },
            (None, None) => {
                return Err(Error::new(
                    ErrorKind::Other,
                    format!("{}: neither a tag nor a digest", c.repository),
                ))
            }
        };
        // The digest the destination will have: the source's, unless platforms are selected.
        let mut top: Option<Manifest> = None;
        let want = if self.cfg.source.platforms.is_empty() {
            digest.clone()
        } else {
            let m = src.get_manifest(&c.repository, &digest).await?;
            let d = Plan::of(&m, &self.cfg.source.platforms)?.digest(&m);
            top = Some(m);
            d
        };
        let dst_repo = self.cfg.destination_repository(&c.repository);
        let reference = c.tag.clone().unwrap_or_else(|| want.clone());
        let there = self
            .sides
            .destination
            .head_manifest(&dst_repo, &reference)
            .await?;
        if there.is_some_and(|h| h.digest == want) {
            return Ok(Examined::UpToDate);
        }
        let top = match top {
            Some(m) => m,
            None => src.get_manifest(&c.repository, &digest).await?,
        };
        let (children, target) = self.copier.manifests(&c.repository, &top).await?;
        let all: Vec<&Manifest> = children.iter().chain(std::iter::once(&target)).collect();
        let size = ImageCopier::blobs(&all)?.iter().map(|b| b.size).sum();
        if !self.dry_run {
            self.ensure_repository(&dst_repo).await?;
        }
        Ok(Examined::Move(JobImage {
            repository: c.repository.clone(),
            tag: c.tag.clone(),
            digest,
            size,
        }))
    }

    async fn ensure_repository(&self, name: &str) -> Result<()> {
        if self.ensured.lock().await.contains(name) {
            return Ok(());
        }
        let ecr = &self.sides.destination_ecr;
        if aws::ensure_ecr_repository(&ecr.client, ecr.registry_id.as_deref(), name).await? {
            tracing::info!(repository = %name, "created the destination repository");
            self.created.lock().await.push(name.to_owned());
        }
        self.ensured.lock().await.insert(name.to_owned());
        Ok(())
    }
}

/// Why `repository:reference` is missing, in the registry's words: a HEAD answers 404 without a body, a GET
/// says whether the repository (`NAME_UNKNOWN`) or the tag (`MANIFEST_UNKNOWN`) is unknown.
async fn missing(r: &Registry, repository: &str, reference: &str) -> Error {
    match r.get_manifest(repository, reference).await {
        Err(e) => e,
        Ok(_) => not_found(r, repository, reference),
    }
}

fn not_found(r: &Registry, repository: &str, reference: &str) -> Error {
    let what = if crate::registry::is_digest(reference) {
        "no such image"
    } else {
        "no such tag"
    };
    Error::new(
        ErrorKind::NotFound,
        format!("{}: {what} (HTTP 404)", r.describe(repository, reference)),
    )
    .with_code("MANIFEST_UNKNOWN")
}

/// A ledger row for an image that failed at the finder.
fn failure_row(image: &str, error: &str) -> ObjectRecord {
    let (repository, tag) = match image.rsplit_once(':') {
        Some((r, t)) if !t.contains('/') && !r.ends_with("@sha256") => {
            (r.to_owned(), Some(t.to_owned()))
        }
        _ => (image.split('@').next().unwrap_or(image).to_owned(), None),
    };
    ObjectRecord {
        error: Some(error.to_owned()),
        image: Some(ImageRow {
            repository,
            tag,
            digest: image
                .split_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default(),
        }),
        ..ObjectRecord::new(image, Status::Failed, 0, 1)
    }
}

/// A whole image finder run: expand, compare, create repositories, enqueue (or, for a dry run, only report).
pub async fn find(
    cfg: &ImageJobConfig,
    sides: &ImageSides,
    sink: Sink,
    run_id: Option<String>,
    stats: Stats,
) -> Result<ImageFinderReport> {
    let start = std::time::Instant::now();
    let sent_before = crate::requests::Requests::now();
    let (src_before, dst_before) = (sides.source.requests(), sides.destination.requests());
    let run = run_id.unwrap_or_else(new_run_id);
    let dry_run = matches!(sink, Sink::DryRun);
    if let Sink::Queue { ledger, .. } = &sink {
        ledger.start_run(&run).await?;
    }
    let (found, mut failures) = candidates(cfg, sides).await?;
    let examiner = Examiner {
        cfg,
        sides,
        copier: ImageCopier::new(
            sides.source.clone(),
            sides.destination.clone(),
            copy_options(cfg),
            MemoryBudget::new(1),
            stats.clone(),
        ),
        dry_run,
        ensured: Mutex::default(),
        created: Mutex::default(),
    };
    let examined: Vec<(Candidate, Result<Examined>)> = stream::iter(found.into_iter().map(|c| {
        let examiner = &examiner;
        async move {
            let r = examiner.examine(&c).await;
            (c, r)
        }
    }))
    .buffer_unordered(cfg.finder.parallelism as usize)
    .collect()
    .await;
    let mut report = ImageFinderReport {
        run: run.clone(),
        dry_run,
        ..Default::default()
    };
    let mut jobs: BTreeMap<String, Job> = BTreeMap::new();
    for (c, r) in examined {
        report.scanned += 1;
        stats.send(StatEvent::Scanned);
        match r {
            Ok(Examined::UpToDate) => report.up_to_date += 1,
            Ok(Examined::Move(image)) => {
                report.to_move += 1;
                report.bytes_to_move += image.size;
                stats.send(StatEvent::Pending { bytes: image.size });
                jobs.insert(
                    image.key(),
                    Job::Image {
                        id: new_id(),
                        run: run.clone(),
                        image,
                    },
                );
            }
            Err(e) => {
                tracing::warn!(image = %c.key(), "{e}");
                failures.push(FindFailure {
                    image: c.key(),
                    error: e.to_string(),
                });
            }
        }
    }
    report.failed = failures.len() as u64;
    report.sample_images = jobs
        .keys()
        .take(cfg.finder.dry_run_keys as usize)
        .cloned()
        .collect();
    report.jobs = jobs.len() as u64;
    report.repositories_created = std::mem::take(&mut *examiner.created.lock().await);
    report.repositories_created.sort();
    if let Sink::Queue { queue, ledger } = &sink {
        // The failures are the run's too: each is counted once (its job id is the image's), found and failed.
        for f in &failures {
            let row = failure_row(&f.image, &f.error);
            ledger
                .finish_job(&run, &format!("find-{}", f.image), &[row], |_| true)
                .await?;
        }
        queue
            .send_all(jobs.values().map(Job::to_body).collect())
            .await?;
        ledger
            .finish_run(&run, report.to_move + report.failed, report.bytes_to_move)
            .await?;
    }
    report.failures = failures;
    report.source_requests = sides.source.requests() - src_before;
    report.destination_requests = sides.destination.requests() - dst_before;
    report.requests = crate::requests::Requests::since(sent_before);
    report.control_plane_calls = report.requests.control_plane();
    report.seconds = start.elapsed().as_secs_f64();
    Ok(report)
}

/// What became of an image job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome {
    Copied(CopyReport),
    /// The source no longer has the image the finder saw (like an object gone from the source).
    Gone,
}

/// A worker's image side: the copier, and the memory it may hold.
pub struct ImageEngine {
    pub cfg: Arc<ImageJobConfig>,
    pub copier: ImageCopier,
    memory: MemoryBudget,
}

impl std::fmt::Debug for ImageEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageEngine")
            .field("copier", &self.copier)
            .finish()
    }
}

impl ImageEngine {
    /// An engine copying between `sides`. Its memory budget: a chunk for each blob of each image in flight
    /// (`concurrency × part_concurrency` chunks).
    pub fn new(cfg: Arc<ImageJobConfig>, sides: &ImageSides, stats: Stats) -> Self {
        let options = copy_options(&cfg);
        let memory = MemoryBudget::new(
            cfg.worker.concurrency as u64
                * cfg.worker.part_concurrency as u64
                * options.chunk_size.max(crate::registry::copy::MIN_CHUNK) as u64,
        );
        ImageEngine {
            copier: ImageCopier::new(
                sides.source.clone(),
                sides.destination.clone(),
                options,
                memory.clone(),
                stats,
            ),
            memory,
            cfg,
        }
    }

    pub fn memory_bytes(&self) -> u64 {
        self.memory.total_bytes()
    }

    /// What one image job holds at its busiest.
    pub fn job_bytes(&self) -> u64 {
        self.cfg.worker.part_concurrency as u64 * self.copier.options.chunk_size as u64
    }

    /// Copy the image of `job`, pinned to the digest the finder saw, tagged last.
    pub async fn copy(&self, job: &JobImage) -> Result<ImageOutcome> {
        let src = &self.copier.source;
        if src
            .head_manifest(&job.repository, &job.digest)
            .await?
            .is_none()
        {
            return Ok(ImageOutcome::Gone);
        }
        let destination = self.cfg.destination_repository(&job.repository);
        self.copier
            .copy(
                &job.repository,
                &job.digest,
                &destination,
                job.tag.as_deref(),
            )
            .await
            .map(ImageOutcome::Copied)
            .map_err(|e| {
                e.context(format!(
                    "copying {} to {}",
                    src.describe(&job.repository, &job.digest),
                    self.copier
                        .destination
                        .describe(&destination, job.tag.as_deref().unwrap_or(&job.digest))
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_rows_name_the_image() {
        let r = failure_row("team/app:1.0", "boom");
        let i = r.image.unwrap();
        assert_eq!(
            (i.repository.as_str(), i.tag.as_deref()),
            ("team/app", Some("1.0"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = failure_row(&format!("app@{d}"), "boom");
        let i = r.image.unwrap();
        assert_eq!((i.repository.as_str(), i.tag, i.digest), ("app", None, d));
        assert_eq!(r.status, Status::Failed);
        assert_eq!(r.error.as_deref(), Some("boom"));
    }

    #[test]
    fn candidates_are_keyed_by_tag_or_digest() {
        let c = Candidate {
            repository: "a/b".into(),
            tag: None,
            digest: Some("sha256:1".into()),
        };
        assert_eq!(c.key(), "a/b@sha256:1");
        let c = Candidate {
            tag: Some("t".into()),
            ..c
        };
        assert_eq!(c.key(), "a/b:t");
    }
}

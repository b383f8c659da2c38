//! End to end: image transfers by the real `finder` and `worker` binaries, between Debian docker-registry
//! instances (one behind htpasswd Basic auth imitating ECR's `AWS:<token>` login, whose password is what
//! moto's GetAuthorizationToken returns; one behind a Bearer-token stand-in, see `dth_tests::images`), with
//! ECR's control plane (repositories, tokens, an `ecr` source's image lists) from moto. Images are built by
//! the tests as OCI layouts and pushed with skopeo; what arrives is read back with `skopeo inspect --raw`.
//! Every registry is reached through a [`FaultProxy`], which counts requests by distribution API operation
//! and injects failures where a test asks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dth_tests::fault::{Fault, FaultProxy, Rule};
use dth_tests::images::{docker_image, docker_list, oci_index, token_auth, Layout};
use dth_tests::registry::Registry;
use dth_tests::*;
use serde_json::{json, Value};

const MIB: usize = 1024 * 1024;
/// moto's account, and the password its GetAuthorizationToken hands out for it (`AWS:<account>-auth-token`).
const ACCOUNT: &str = "123456789012";
const ECR_PASSWORD: &str = "123456789012-auth-token";

/// An image transfer's config on this world: `source` and `destination` blocks, the queue and ledger, every
/// AWS endpoint at moto; `patch` is merged over it.
fn config(w: &World, q: &Queues, source: Value, destination: Value, patch: Value) -> PathBuf {
    let e = &w.endpoint;
    let mut v = json!({
        "transfer": "images",
        "source": source,
        "destination": destination,
        "worker": {"concurrency": 2, "part_concurrency": 3, "heartbeat_secs": 1, "visibility_secs": 5},
        "queue": {"url": q.url},
        "ledger": {"table": "ledger"},
        "aws": {"region": REGION, "endpoints": {"sqs": e, "dynamodb": e, "secretsmanager": e, "s3": e,
                "autoscaling": e, "ecr": e}}
    });
    merge(&mut v, patch);
    let path = w.dir.join(format!("images-{}.json", fastrand::u32(..)));
    std::fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    path
}

/// Run the finder for `run`; its JSON report.
fn find(w: &World, cfg: &Path, run: &str) -> Value {
    let out = w.run("finder", cfg, &["--json", "--run-id", run]);
    assert!(out.status.success(), "finder failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// Run a worker until the queue is drained; its JSON report.
fn work(w: &World, cfg: &Path) -> Value {
    let out = w.run("worker", cfg, &["--exit-when-idle", "3", "--json"]);
    assert!(out.status.success(), "worker failed: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim()).unwrap_or_else(|e| panic!("{e}: {}", stdout(&out)))
}

/// The image rows of a run: key → (status, digest, error).
async fn rows(w: &World, run: &str) -> BTreeMap<String, (String, String, Option<String>)> {
    dth_core::ledger::DynamoLedger::new(w.ddb.clone(), "ledger")
        .objects(run)
        .await
        .unwrap()
        .into_iter()
        .map(|r| {
            let digest = r.image.map(|i| i.digest).unwrap_or_default();
            (r.key, (r.status.as_str().to_owned(), digest, r.error))
        })
        .collect()
}

fn n(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

async fn summary(w: &World, run: &str) -> (u64, u64, u64) {
    let s = w.summary("ledger", run).await;
    let get = |k: &str| {
        s.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0u64)
    };
    (
        get("objects_found"),
        get("objects_done"),
        get("objects_failed"),
    )
}

/// What arrived at `dst` as `reference` is byte for byte the source's manifest, and every per-platform
/// manifest of an index is there by digest.
fn assert_arrived(dst: &Registry, reference: &str, image: &Layout) {
    let raw = dst.inspect_raw(reference);
    assert_eq!(
        dth_tests::images::sha256(&raw),
        image.digest,
        "{reference}: the destination's manifest digest"
    );
    assert_eq!(raw, image.manifest, "{reference}: manifest bytes");
    let repo = match reference.split_once('@') {
        Some((repo, _)) => repo,
        None => reference.split(':').next().unwrap(),
    };
    for (platform, digest) in &image.platforms {
        assert!(
            dst.has(&format!("{repo}@{digest}")),
            "{reference}: the {platform} manifest {digest} is missing"
        );
    }
}

struct Counts(BTreeMap<String, usize>);

impl Counts {
    fn of(p: &FaultProxy) -> Counts {
        let ops = [
            "HeadManifest",
            "GetManifest",
            "PutManifest",
            "HeadBlob",
            "GetBlob",
            "StartUpload",
            "MountBlob",
            "PatchUpload",
            "PutUpload",
            "Catalog",
            "ListTags",
            "Base",
        ];
        Counts(
            ops.iter()
                .map(|o| ((*o).to_owned(), p.calls("registry", o)))
                .chain(std::iter::once(("*".to_owned(), p.calls("registry", "*"))))
                .collect(),
        )
    }

    fn since(&self, before: &Counts) -> Counts {
        Counts(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), v - before.0.get(k).copied().unwrap_or(0)))
                .collect(),
        )
    }

    fn get(&self, op: &str) -> usize {
        self.0[op]
    }
}

impl std::fmt::Debug for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_tags_and_the_catalog_copy_with_their_digests_and_a_rerun_copies_nothing() {
    let w = World::start("images-copy").await;
    let q = w.queues("jobs", 5, 5).await;
    w.table("ledger").await;
    let src = Registry::start(&w.dir.join("src"));
    let dst = Registry::start_with_login(&w.dir.join("dst"), "AWS", ECR_PASSWORD);
    let src_proxy = FaultProxy::start(&format!("http://{}", src.address())).await;
    let dst_proxy = FaultProxy::start(&format!("http://{}", dst.address())).await;

    let l = |n: &str| w.dir.join("layouts").join(n);
    // A 6 MiB layer: uploaded in two chunks.
    let app1 = docker_image(&l("app1"), &[300_000, 6 * MIB + 123]);
    let app2 = oci_index(
        &l("app2"),
        &["linux/amd64", "linux/arm64"],
        MIB,
        &[200_000, 50_000],
    );
    let base = docker_image(&l("base"), &[100_000]);
    let tool_a = docker_image(&l("tool-a"), &[10_000, 20_000, 30_000]);
    let tool_b = docker_list(
        &l("tool-b"),
        &["linux/amd64", "linux/arm64", "linux/ppc64le"],
        40_000,
        &[5_000],
    );
    src.push(&app1.dir, "app", "1.0");
    src.push(&app2.dir, "app", "2.0");
    src.push(&base.dir, "team/base", "1");
    src.push(&tool_a.dir, "tools", "a");
    src.push(&tool_b.dir, "tools", "b");

    // Selected images: a repository's every tag, and one tag.
    let selected = config(
        &w,
        &q,
        json!({"type": "registry", "registry": src_proxy.url(), "images": ["app:ALL_TAGS", "team/base:1"]}),
        json!({"registry": dst_proxy.url(), "prefix": "mirror"}),
        json!({}),
    );
    let out = w.run("finder", &selected, &["--dry-run", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let dry: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(n(&dry["to_move"]), 3, "{dry}");
    assert_eq!(
        dry["sample_images"],
        json!(["app:1.0", "app:2.0", "team/base:1"])
    );
    assert_eq!(
        dry["repositories_created"],
        json!([]),
        "a dry run creates nothing"
    );
    assert!(w.ecr_repositories().await.is_empty());
    assert_eq!(w.depth(&q.url).await, (0, 0));

    let started = std::time::Instant::now();
    let report = find(&w, &selected, "r1");
    assert_eq!(n(&report["to_move"]), 3, "{report}");
    assert_eq!(n(&report["failed"]), 0, "{report}");
    assert_eq!(
        report["repositories_created"],
        json!(["mirror/app", "mirror/team/base"]),
        "{report}"
    );
    assert_eq!(
        w.ecr_repositories().await,
        vec!["mirror/app", "mirror/team/base"],
        "the destination repositories are created in ECR"
    );
    let before = Counts::of(&dst_proxy);
    let worker = work(&w, &selected);
    let copy_secs = started.elapsed().as_secs_f64();
    let pushed = Counts::of(&dst_proxy).since(&before);
    assert_eq!(n(&worker["totals"]["copied"]), 3, "{worker}");
    assert_arrived(&dst, "mirror/app:1.0", &app1);
    assert_arrived(&dst, "mirror/app:2.0", &app2);
    assert_arrived(&dst, "mirror/team/base:1", &base);
    // Two chunks for the 6 MiB layer, one for each other blob: never a monolithic upload.
    assert!(
        pushed.get("PatchUpload") > pushed.get("PutUpload"),
        "{pushed:?}"
    );
    let r1 = rows(&w, "r1").await;
    assert_eq!(r1.len(), 3, "{r1:?}");
    assert_eq!(r1["app:1.0"], ("DONE".into(), app1.digest.clone(), None));
    assert_eq!(r1["app:2.0"], ("DONE".into(), app2.digest.clone(), None));
    assert_eq!(r1["team/base:1"].1, base.digest);
    assert_eq!(summary(&w, "r1").await, (3, 3, 0));
    let bytes = app1.blob_bytes + app2.blob_bytes + base.blob_bytes;
    eprintln!(
        "first copy: 3 images, {bytes} bytes of blobs in {copy_secs:.1}s (finder and worker processes), the \
         worker's own run {:.1}s; destination requests {pushed:?}",
        worker["report"]["seconds"].as_f64().unwrap_or_default()
    );

    // Nothing changed: the finder asks each side for each tag's digest (a HEAD) and enqueues nothing.
    let (src_before, dst_before) = (Counts::of(&src_proxy), Counts::of(&dst_proxy));
    let report = find(&w, &selected, "r2");
    let (src_rerun, dst_rerun) = (
        Counts::of(&src_proxy).since(&src_before),
        Counts::of(&dst_proxy).since(&dst_before),
    );
    assert_eq!(n(&report["to_move"]), 0, "{report}");
    assert_eq!(n(&report["up_to_date"]), 3, "{report}");
    assert_eq!(n(&report["jobs"]), 0, "{report}");
    assert_eq!(w.depth(&q.url).await, (0, 0));
    for op in ["GetBlob", "GetManifest"] {
        assert_eq!(src_rerun.get(op), 0, "{op} at the source: {src_rerun:?}");
    }
    for op in [
        "HeadBlob",
        "StartUpload",
        "PatchUpload",
        "PutUpload",
        "PutManifest",
        "GetManifest",
    ] {
        assert_eq!(
            dst_rerun.get(op),
            0,
            "{op} at the destination: {dst_rerun:?}"
        );
    }
    assert_eq!(dst_rerun.get("HeadManifest"), 3, "{dst_rerun:?}");
    assert_eq!(
        dst_rerun.get("*"),
        4,
        "one GET /v2/ to learn the login, then a HEAD per tag: {dst_rerun:?}"
    );
    assert_eq!(
        src_rerun.get("*"),
        5,
        "/v2/, app's tag list, a HEAD per tag: {src_rerun:?}"
    );
    eprintln!("no-change rerun: source requests {src_rerun:?}, destination requests {dst_rerun:?}");

    // Every repository, from the registry's catalog: only the tools are new.
    let all = config(
        &w,
        &q,
        json!({"type": "registry", "registry": src_proxy.url(), "all": true}),
        json!({"registry": dst_proxy.url(), "prefix": "mirror"}),
        json!({}),
    );
    let report = find(&w, &all, "r3");
    assert_eq!(n(&report["scanned"]), 5, "{report}");
    assert_eq!(n(&report["to_move"]), 2, "{report}");
    assert_eq!(
        report["repositories_created"],
        json!(["mirror/tools"]),
        "{report}"
    );
    work(&w, &all);
    assert_arrived(&dst, "mirror/tools:a", &tool_a);
    assert_arrived(&dst, "mirror/tools:b", &tool_b);
    assert_eq!(summary(&w, "r3").await, (2, 2, 0));

    // Within one registry (source = destination, logged in with a registry secret): blobs are mounted from
    // the source repository, never uploaded.
    let login = w
        .secret(
            "dst-login",
            &json!({"username": "AWS", "password": ECR_PASSWORD}).to_string(),
        )
        .await;
    let within = config(
        &w,
        &q,
        json!({"type": "registry", "registry": dst_proxy.url(), "credentials_secret_arn": login,
               "images": ["mirror/app:1.0"]}),
        json!({"registry": dst_proxy.url(), "prefix": "again"}),
        json!({}),
    );
    let before = Counts::of(&dst_proxy);
    assert_eq!(n(&find(&w, &within, "r4")["to_move"]), 1);
    work(&w, &within);
    let moved = Counts::of(&dst_proxy).since(&before);
    assert_arrived(&dst, "again/mirror/app:1.0", &app1);
    assert_eq!(
        moved.get("MountBlob"),
        3,
        "config and two layers: {moved:?}"
    );
    assert_eq!(moved.get("PatchUpload"), 0, "{moved:?}");
    assert_eq!(moved.get("GetBlob"), 0, "{moved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_tag_an_unknown_repository_and_refused_credentials_fail_alone() {
    let w = World::start("images-failures").await;
    let q = w.queues("jobs", 5, 5).await;
    w.table("ledger").await;
    let src = Registry::start(&w.dir.join("src"));
    let dst = Registry::start_with_login(&w.dir.join("dst"), "AWS", ECR_PASSWORD);
    let l = |n: &str| w.dir.join("layouts").join(n);
    let app = oci_index(
        &l("app"),
        &["linux/amd64", "linux/arm64"],
        200_000,
        &[30_000],
    );
    let secret_app = docker_image(&l("secret"), &[10_000]);
    let gone = docker_image(&l("gone"), &[10_000]);
    src.push(&app.dir, "app", "1.0");
    src.push(&secret_app.dir, "secret/app", "1");
    src.push(&gone.dir, "gone", "1");
    // Bearer tokens for `reader`; the token service never grants `secret/app`.
    let tokens = token_auth(&src.address(), "reader", "pw", &["secret/app"]).await;
    let login = w
        .secret(
            "src-login",
            &json!({"username": "reader", "password": "pw"}).to_string(),
        )
        .await;
    let cfg = config(
        &w,
        &q,
        json!({"type": "registry", "registry": tokens.url(), "credentials_secret_arn": login,
               "images": ["app:1.0", "app:missing", "ghost/app:1", "secret/app:1", "gone:1"]}),
        json!({"registry": format!("http://{}", dst.address())}),
        json!({}),
    );
    let report = find(&w, &cfg, "r1");
    assert_eq!(n(&report["to_move"]), 2, "{report}");
    assert_eq!(n(&report["failed"]), 3, "{report}");
    // Deleted at the source after the finder saw it: the worker finds it gone, as an object gone from a bucket.
    let out = dth_tests::registry::skopeo()
        .args(["delete", "--tls-verify=false"])
        .arg(format!("docker://{}/gone@{}", src.address(), gone.digest))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    work(&w, &cfg);
    assert!(!dst.has("gone:1"));
    assert_arrived(&dst, "app:1.0", &app);
    assert!(!dst.has("secret/app:1"));
    let r = rows(&w, "r1").await;
    assert_eq!(r["app:1.0"].0, "DONE", "{r:?}");
    let failed = |k: &str| {
        let (status, _, error) = &r[k];
        assert_eq!(status, "FAILED", "{k}: {r:?}");
        error.clone().unwrap_or_default()
    };
    let missing = failed("app:missing");
    assert!(
        missing.contains("MANIFEST_UNKNOWN")
            && missing.contains(&format!("{}/app:missing", tokens.url())),
        "{missing}"
    );
    // docker-registry 2.8 answers an unknown repository's manifest as an unknown manifest (ECR: NAME_UNKNOWN).
    let ghost = failed("ghost/app:1");
    assert!(
        ghost.contains("HTTP 404") && ghost.contains(&format!("{}/ghost/app:1", tokens.url())),
        "{ghost}"
    );
    let refused = failed("secret/app:1");
    assert!(
        refused.contains("HTTP 401")
            && refused.contains("secret/app:1")
            && refused.contains("refused"),
        "{refused}"
    );
    assert_eq!(r["gone:1"].0, "GONE", "{r:?}");
    // Found 5, one copied, three failed, one gone: each counted once.
    assert_eq!(summary(&w, "r1").await, (5, 1, 3));
    let s = w.summary("ledger", "r1").await;
    assert_eq!(s["objects_gone"].as_n().unwrap(), "1");
    assert_eq!(w.depth(&q.url).await, (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selected_platforms_are_copied_and_compared_exactly() {
    let w = World::start("images-platforms").await;
    let q = w.queues("jobs", 5, 5).await;
    w.table("ledger").await;
    let src = Registry::start(&w.dir.join("src"));
    let dst = Registry::start_with_login(&w.dir.join("dst"), "AWS", ECR_PASSWORD);
    let multi = oci_index(
        &w.dir.join("layouts/multi"),
        &["linux/amd64", "linux/arm64", "linux/s390x"],
        100_000,
        &[20_000],
    );
    src.push(&multi.dir, "multi", "1");
    let child = |p: &str| {
        multi
            .platforms
            .iter()
            .find(|(q, _)| q == p)
            .unwrap()
            .1
            .clone()
    };
    let source = json!({"type": "registry", "registry": format!("http://{}", src.address()), "images": ["multi:1"]});

    // One platform: its manifest, byte for byte, under the tag.
    let one = config(
        &w,
        &q,
        json!({"platforms": ["linux/arm64"]}),
        json!({"registry": format!("http://{}", dst.address()), "prefix": "arm"}),
        json!({"source": source.clone()}),
    );
    assert_eq!(n(&find(&w, &one, "r1")["to_move"]), 1);
    work(&w, &one);
    let raw = dst.inspect_raw("arm/multi:1");
    assert_eq!(dth_tests::images::sha256(&raw), child("linux/arm64"));
    assert_eq!(rows(&w, "r1").await["multi:1"].1, child("linux/arm64"));
    assert_eq!(
        n(&find(&w, &one, "r2")["to_move"]),
        0,
        "the rerun compares the child's digest"
    );

    // Two platforms: a derived index of those two; its digest is stable, so the rerun finds it up to date.
    let two = config(
        &w,
        &q,
        json!({"platforms": ["linux/amd64", "linux/arm64"]}),
        json!({"registry": format!("http://{}", dst.address()), "prefix": "two"}),
        json!({"source": source}),
    );
    assert_eq!(n(&find(&w, &two, "r3")["to_move"]), 1);
    work(&w, &two);
    let raw: Value = serde_json::from_slice(&dst.inspect_raw("two/multi:1")).unwrap();
    let listed: Vec<&str> = raw["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["digest"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![child("linux/amd64"), child("linux/arm64")]);
    assert!(!dst.has(&format!("two/multi@{}", child("linux/s390x"))));
    assert_eq!(n(&find(&w, &two, "r4")["to_move"]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_registries_and_a_worker_killed_mid_blob_lose_nothing() {
    let w = World::start("images-faults").await;
    let q = w.queues("jobs", 10, 5).await;
    w.table("ledger").await;
    let src = Registry::start(&w.dir.join("src"));
    let dst = Registry::start_with_login(&w.dir.join("dst"), "AWS", ECR_PASSWORD);
    let src_proxy = FaultProxy::start(&format!("http://{}", src.address())).await;
    let dst_proxy = FaultProxy::start(&format!("http://{}", dst.address())).await;
    let l = |n: &str| w.dir.join("layouts").join(n);
    let images = vec![
        ("big", docker_image(&l("big"), &[12 * MIB, 100_000])),
        (
            "multi",
            oci_index(
                &l("multi"),
                &["linux/amd64", "linux/arm64"],
                300_000,
                &[7 * MIB],
            ),
        ),
        ("small", docker_image(&l("small"), &[50_000, 60_000])),
        ("tiny", docker_image(&l("tiny"), &[1_000])),
    ];
    for (repo, image) in &images {
        src.push(&image.dir, repo, "v1");
    }
    // The first chunk that is not a blob's first is held: the worker is then mid-blob, the blob's first 5 MiB
    // at the destination in an open upload session, until it is killed.
    let seen = Arc::new(AtomicUsize::new(0));
    let hold = {
        let seen = seen.clone();
        dst_proxy.inject(
            Rule::on(
                "registry",
                "PatchUpload",
                Fault::Delay(Duration::from_secs(600)),
            )
            .when(move |r| {
                r.header("content-range")
                    .is_some_and(|c| !c.starts_with("0-"))
                    && seen.fetch_add(1, Ordering::SeqCst) == 0
            }),
        )
    };
    // 5 % of every request to either registry fails (seeded): answered 500 without reaching it. At the
    // destination another 5 % take effect and then lose their answer (the connection is reset): a chunk the
    // registry took but the worker does not know it took, a committed blob, a pushed manifest.
    src_proxy.inject(
        Rule::new(Fault::InternalError)
            .service("registry")
            .share(0.05, 7),
    );
    dst_proxy.inject(
        Rule::new(Fault::InternalError)
            .service("registry")
            .share(0.05, 11),
    );
    dst_proxy.inject(
        Rule::new(Fault::ResetAfterForward)
            .service("registry")
            .share(0.05, 13),
    );
    let cfg = config(
        &w,
        &q,
        json!({"type": "registry", "registry": src_proxy.url(), "images": ["big:v1", "multi:v1", "small:v1", "tiny:v1"]}),
        json!({"registry": dst_proxy.url(), "prefix": "m"}),
        json!({"worker": {"concurrency": 1, "part_concurrency": 2}}),
    );
    let report = find(&w, &cfg, "r1");
    assert_eq!(n(&report["to_move"]), 4, "{report}");

    let (mut first, log) = w.spawn_worker(&cfg, &["--exit-when-idle", "3"]);
    wait_for!(Duration::from_secs(120), "a chunk upload to be held", {
        dst_proxy.fired(hold) == 1
    });
    first.kill().unwrap(); // SIGKILL, mid-blob
    first.wait().unwrap();
    dst_proxy.remove(hold);
    // Whatever is tagged already is complete; the image being copied is not tagged.
    let mut untagged = 0;
    for (repo, image) in &images {
        let reference = format!("m/{repo}:v1");
        if dst.has(&reference) {
            assert_arrived(&dst, &reference, image);
        } else {
            untagged += 1;
        }
    }
    assert!(untagged >= 1, "the killed copy left a tag behind");

    // Another worker takes the released job (after its visibility timeout) and the rest.
    let worker = work(&w, &cfg);
    for (repo, image) in &images {
        assert_arrived(&dst, &format!("m/{repo}:v1"), image);
    }
    let r = rows(&w, "r1").await;
    assert!(r.values().all(|(s, _, _)| s == "DONE"), "{r:?}");
    assert_eq!(
        summary(&w, "r1").await,
        (4, 4, 0),
        "each image counted once"
    );
    assert!(
        src_proxy.injected("registry", "*") > 0 && dst_proxy.injected("registry", "*") > 0,
        "faults were injected: {} at the source, {} at the destination",
        src_proxy.injected("registry", "*"),
        dst_proxy.injected("registry", "*")
    );
    eprintln!(
        "faults injected: {} of {} source requests, {} of {} destination requests; second worker: {worker}; \
         first worker's log: {}",
        src_proxy.injected("registry", "*"),
        src_proxy.calls("registry", "*"),
        dst_proxy.injected("registry", "*"),
        dst_proxy.calls("registry", "*"),
        log.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ecr_source_is_listed_through_the_ecr_api() {
    let w = World::start("images-ecr").await;
    let q = w.queues("jobs", 5, 5).await;
    w.table("ledger").await;
    // moto's ECR has no /v2/ data plane: the blobs and manifests live in a registry, and the same manifests
    // are put into moto's repositories with their real digests (PutImage's imageDigest; moto would otherwise
    // make one up), where ListImages finds them.
    let src = Registry::start(&w.dir.join("src"));
    let dst = Registry::start_with_login(&w.dir.join("dst"), "AWS", ECR_PASSWORD);
    let l = |n: &str| w.dir.join("layouts").join(n);
    let app = docker_image(&l("app"), &[40_000, 50_000]);
    let multi = oci_index(
        &l("multi"),
        &["linux/amd64", "linux/arm64"],
        30_000,
        &[10_000],
    );
    let client = w.ecr();
    for (repo, image, media_type) in [
        ("app", &app, dth_tests::images::DOCKER_MANIFEST),
        ("multi", &multi, dth_tests::images::OCI_INDEX),
    ] {
        src.push(&image.dir, repo, "1.0");
        client
            .create_repository()
            .repository_name(repo)
            .send()
            .await
            .unwrap();
        client
            .put_image()
            .repository_name(repo)
            .image_tag("1.0")
            .image_manifest(String::from_utf8(image.manifest.clone()).unwrap())
            .image_manifest_media_type(media_type)
            .image_digest(&image.digest)
            .send()
            .await
            .unwrap();
        let listed = client
            .list_images()
            .repository_name(repo)
            .send()
            .await
            .unwrap();
        assert_eq!(
            listed.image_ids()[0].image_digest(),
            Some(image.digest.as_str()),
            "moto keeps the real digest"
        );
    }
    // An untagged image in ECR (its tag at the registry is only how skopeo pushed it there).
    let untagged = docker_image(&l("untagged"), &[20_000]);
    src.push(&untagged.dir, "app", "scratch");
    client
        .put_image()
        .repository_name("app")
        .image_manifest(String::from_utf8(untagged.manifest.clone()).unwrap())
        .image_manifest_media_type(dth_tests::images::DOCKER_MANIFEST)
        .image_digest(&untagged.digest)
        .send()
        .await
        .unwrap();
    let cfg = config(
        &w,
        &q,
        json!({"type": "ecr", "account_id": ACCOUNT, "registry": format!("http://{}", src.address()), "all": true}),
        json!({"registry": format!("http://{}", dst.address()), "prefix": "from-ecr"}),
        json!({}),
    );
    let report = find(&w, &cfg, "r1");
    assert_eq!(n(&report["to_move"]), 3, "{report}");
    work(&w, &cfg);
    assert_arrived(&dst, "from-ecr/app:1.0", &app);
    assert_arrived(&dst, "from-ecr/multi:1.0", &multi);
    assert_arrived(
        &dst,
        &format!("from-ecr/app@{}", untagged.digest),
        &untagged,
    );
    assert!(!dst.has("from-ecr/app:scratch"), "copied untagged");
    assert_eq!(
        rows(&w, "r1").await[&format!("app@{}", untagged.digest)].0,
        "DONE"
    );
    assert_eq!(
        w.ecr_repositories().await,
        vec!["app", "from-ecr/app", "from-ecr/multi", "multi"]
    );
    let report = find(&w, &cfg, "r2");
    assert_eq!(n(&report["to_move"]), 0, "{report}");
    assert_eq!(n(&report["up_to_date"]), 3, "{report}");
    // Without include_untagged, only the tags.
    let tagged = config(
        &w,
        &q,
        json!({"type": "ecr", "account_id": ACCOUNT, "registry": format!("http://{}", src.address()), "all": true,
               "include_untagged": false}),
        json!({"registry": format!("http://{}", dst.address()), "prefix": "from-ecr"}),
        json!({}),
    );
    assert_eq!(n(&find(&w, &tagged, "r3")["scanned"]), 2);
}

/// Refused credentials (an ECR token past its 12 hours) are fetched anew once, and the request goes through;
/// Bearer tokens are fetched once per scope and reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_refreshes_refused_credentials_and_reuses_tokens() {
    use dth_core::registry::{
        BasicCredentials, CredentialSource, RegistryAddress, StaticCredentials,
    };

    #[derive(Debug)]
    struct Rotating {
        refreshes: AtomicUsize,
    }

    #[async_trait::async_trait]
    impl CredentialSource for Rotating {
        async fn credentials(&self, refresh: bool) -> dth_core::Result<Option<BasicCredentials>> {
            if refresh {
                self.refreshes.fetch_add(1, Ordering::SeqCst);
            }
            let password = if self.refreshes.load(Ordering::SeqCst) == 0 {
                "expired"
            } else {
                ECR_PASSWORD
            };
            Ok(Some(BasicCredentials::new("AWS", password)))
        }
    }

    let dir = target_dir()
        .join("e2e")
        .join(format!("images-client-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let locked = Registry::start_with_login(&dir.join("locked"), "AWS", ECR_PASSWORD);
    let open = Registry::start(&dir.join("open"));
    let image = docker_image(&dir.join("layouts/app"), &[1_000]);
    locked.push(&image.dir, "app", "1");
    open.push(&image.dir, "app", "1");
    open.push(&image.dir, "other", "1");
    let address = |a: String| RegistryAddress::parse("test", &format!("http://{a}")).unwrap();

    let source = Arc::new(Rotating {
        refreshes: AtomicUsize::new(0),
    });
    let client = dth_core::registry::Registry::new(address(locked.address()), source.clone(), None);
    let head = client.head_manifest("app", "1").await.unwrap().unwrap();
    assert_eq!(head.digest, image.digest);
    assert_eq!(source.refreshes.load(Ordering::SeqCst), 1);
    // `/v2/` (learning Basic), the HEAD refused, the HEAD with the new login.
    assert_eq!(client.requests(), 3);
    assert!(client.head_manifest("app", "2").await.unwrap().is_none());
    assert_eq!(
        source.refreshes.load(Ordering::SeqCst),
        1,
        "the new login is kept"
    );
    assert_eq!(client.requests(), 4);

    let tokens = token_auth(&open.address(), "reader", "pw", &[]).await;
    let login = Arc::new(StaticCredentials(BasicCredentials::new("reader", "pw")));
    let client = dth_core::registry::Registry::new(
        RegistryAddress::parse("test", tokens.url()).unwrap(),
        login,
        None,
    );
    for _ in 0..3 {
        assert_eq!(
            client
                .head_manifest("app", "1")
                .await
                .unwrap()
                .unwrap()
                .digest,
            image.digest
        );
    }
    assert_eq!(
        tokens.calls("registry", "Token"),
        1,
        "{}",
        tokens.journal_text()
    );
    client.get_manifest("other", "1").await.unwrap();
    assert_eq!(
        tokens.calls("registry", "Token"),
        2,
        "another scope, another token"
    );
    assert_eq!(client.tags("other").await.unwrap(), vec!["1"]);
    assert_eq!(
        tokens.calls("registry", "Token"),
        2,
        "the same scope (pull)"
    );

    let wrong = dth_core::registry::Registry::new(
        RegistryAddress::parse("test", tokens.url()).unwrap(),
        Arc::new(StaticCredentials(BasicCredentials::new("reader", "nope"))),
        None,
    );
    let e = wrong.head_manifest("app", "1").await.unwrap_err();
    assert_eq!(e.kind(), dth_core::ErrorKind::AccessDenied, "{e}");
    assert!(e.to_string().contains("getting a token"), "{e}");
}

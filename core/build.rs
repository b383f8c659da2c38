//! Bakes what ran into the binaries: the git revision (DTH_REVISION from the release scripts, else `git
//! rev-parse HEAD`, else "unknown") and the target triple, read by `dth_core::build_info`.

use std::path::Path;
use std::process::Command;

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

fn main() {
    println!("cargo:rerun-if-env-changed=DTH_REVISION");
    let dir = Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default()).to_path_buf();
    let revision = match std::env::var("DTH_REVISION") {
        Ok(r) if !r.trim().is_empty() => r.trim().to_string(),
        _ => {
            // A new commit or checkout must rebuild: watch HEAD and the ref it names (only paths that exist;
            // cargo reruns every time for a missing one).
            for path in ["HEAD", "packed-refs"]
                .into_iter()
                .map(String::from)
                .chain(git(&dir, &["symbolic-ref", "-q", "HEAD"]))
                .filter_map(|p| {
                    git(
                        &dir,
                        &["rev-parse", "--path-format=absolute", "--git-path", &p],
                    )
                })
            {
                if Path::new(&path).exists() {
                    println!("cargo:rerun-if-changed={path}");
                }
            }
            git(&dir, &["rev-parse", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!("cargo:rustc-env=DTH_REVISION={revision}");
    println!(
        "cargo:rustc-env=DTH_TARGET={}",
        std::env::var("TARGET").unwrap_or_default()
    );
}

//! `docs/` is generated from the schemas (`dth_provider::docs::render`): this fails when the committed files are
//! stale. With `DTH_UPDATE_DOCS=1` it writes them instead.

use std::path::{Path, PathBuf};

const REGENERATE: &str = "DTH_UPDATE_DOCS=1 cargo test -p terraform-provider-dth --test docs";

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the provider crate sits in the workspace root")
        .to_path_buf()
}

#[test]
fn docs_are_up_to_date() {
    let root = repo_root();
    let update = std::env::var_os("DTH_UPDATE_DOCS").is_some_and(|v| !v.is_empty() && v != "0");
    let mut stale = Vec::new();
    for (path, expected) in dth_provider::docs::render() {
        let file = root.join(&path);
        let on_disk = std::fs::read_to_string(&file).ok();
        if on_disk.as_deref() == Some(expected.as_str()) {
            continue;
        }
        if update {
            std::fs::create_dir_all(file.parent().expect("docs files live in a folder"))
                .unwrap_or_else(|e| panic!("creating the folder of {}: {e}", file.display()));
            std::fs::write(&file, &expected)
                .unwrap_or_else(|e| panic!("writing {}: {e}", file.display()));
            eprintln!("wrote {}", path.display());
        } else {
            let why = match on_disk {
                None => "missing".to_owned(),
                Some(text) => first_difference(&text, &expected),
            };
            stale.push(format!("{}: {why}", path.display()));
        }
    }
    assert!(
        stale.is_empty(),
        "the generated docs are stale:\n  {}\nregenerate them with:\n  {REGENERATE}",
        stale.join("\n  ")
    );
}

/// Files under docs/ that no longer come from the schema (a resource renamed or removed) are stale too.
#[test]
fn no_docs_without_a_source() {
    let root = repo_root();
    let rendered: Vec<PathBuf> = dth_provider::docs::render()
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    let mut extra = Vec::new();
    let mut dirs = vec![PathBuf::from("docs")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(root.join(&dir)) else {
            continue;
        };
        for entry in entries.flatten() {
            let rel = dir.join(entry.file_name());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                dirs.push(rel);
            } else if !rendered.contains(&rel) {
                extra.push(rel.display().to_string());
            }
        }
    }
    assert!(
        extra.is_empty(),
        "docs files that nothing generates (delete them, or add them to dth_provider::docs::render): {}",
        extra.join(", ")
    );
}

fn first_difference(on_disk: &str, expected: &str) -> String {
    let mut disk_lines = on_disk.lines();
    for (i, want) in expected.lines().enumerate() {
        match disk_lines.next() {
            Some(have) if have == want => {}
            Some(have) => {
                return format!(
                    "line {} differs:\n    on disk:   {have:?}\n    generated: {want:?}",
                    i + 1
                )
            }
            None => return format!("ends at line {}, the generated file goes on", i + 1),
        }
    }
    if disk_lines.next().is_some() {
        format!(
            "longer than the generated file ({} lines)",
            expected.lines().count()
        )
    } else {
        "differs in line endings or the final newline".to_owned()
    }
}

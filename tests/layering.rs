//! The folders of `src/` form layers: each may use only the ones below it.
//! `proto` ← `topic` ← `auth` ← `mesh` ← `conn` ← `shard` ← `admin` ← `server`.
//! A `use crate::x` that points up (an import cycle between folders) fails
//! here, naming the file and the line.

use std::path::Path;

/// Lower index = lower layer. Top-level files not listed (lib.rs, main.rs)
/// may use anything; `config` and `host` are leaves every layer may read.
const LAYERS: &[&str] = &["proto", "topic", "auth", "mesh", "conn", "shard", "cluster", "admin", "server"];
const SHARED: &[&str] = &["config", "host"];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| *l == module)
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn folders_import_only_lower_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut bad = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let first = rel.components().next().unwrap().as_os_str().to_string_lossy().to_string();
        let module = first.trim_end_matches(".rs");
        let Some(mine) = layer_of(module) else { continue };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(i) = rest.find("crate::") {
                rest = &rest[i + 7..];
                let used: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                checked += 1;
                if SHARED.contains(&used.as_str()) {
                    continue;
                }
                if let Some(theirs) = layer_of(&used) {
                    if theirs > mine {
                        bad.push(format!("{}:{}: {module} uses {used}: {}", rel.display(), n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(checked > 50, "the scan found only {checked} crate paths: is it reading src/?");
    assert!(bad.is_empty(), "imports pointing up a layer:\n{}", bad.join("\n"));
}

#[test]
fn config_uses_no_runtime_layer() {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config.rs")).unwrap();
    for l in ["conn", "shard", "admin", "server"] {
        assert!(!text.contains(&format!("crate::{l}")), "config.rs must not use crate::{l}");
    }
}

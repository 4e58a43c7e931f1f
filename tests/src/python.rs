//! The Python side of parity tests: the project-local `.venv` made by `scripts/setup.sh`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// `$MOCO_REPO_ROOT` (a relocated checkout, e.g. on the GPU machine), else this checkout.
pub fn repo_root() -> PathBuf {
    if let Some(p) = std::env::var_os("MOCO_REPO_ROOT") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace root")
        .to_path_buf()
}

/// `$MOCO_PYTHON`, else the checkout's `.venv/bin/python3`.
pub fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("MOCO_PYTHON") {
        return Ok(PathBuf::from(p));
    }
    let p = repo_root().join(".venv/bin/python3");
    if !p.exists() {
        bail!(
            "{} not found: run scripts/setup.sh (or `make test`) first",
            p.display()
        );
    }
    Ok(p)
}

pub fn script(name: &str) -> PathBuf {
    repo_root().join("tests/python").join(name)
}

/// Runs a reference script; its stderr is shown on failure.
pub fn run_script(name: &str, args: &[&str]) -> Result<String> {
    let py = python()?;
    let out = Command::new(&py)
        .arg(script(name))
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .output()
        .with_context(|| format!("running {} {name}", py.display()))?;
    if !out.status.success() {
        bail!(
            "{name} {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

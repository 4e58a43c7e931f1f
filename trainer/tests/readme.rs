//! The README's "your own data" commands run as written (scripts/readme_check.sh, on a small
//! generated dataset), so that the first commands a user copies keep working.

use std::path::Path;
use std::process::Command;

#[test]
fn the_readme_commands_run_as_written() {
    let bin = Path::new(env!("CARGO_BIN_EXE_moco-train"))
        .parent()
        .unwrap();
    if !bin.join("moco-infer").exists() {
        eprintln!(
            "skipped: moco-infer is not built beside moco-train (cargo test --workspace builds it)"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let o = Command::new("bash")
        .arg(root.join("scripts/readme_check.sh"))
        .env("BIN", bin)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

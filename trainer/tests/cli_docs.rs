//! docs/cli.md is the command-line reference generated from the clap definitions of the three
//! binaries: this test fails when the committed file is out of date. Regenerate it with
//! `MOCO_BLESS=1 cargo test --release -p moco-trainer --test cli_docs`.

use std::path::Path;
use std::process::Command;

fn markdown(bin: &Path) -> String {
    let o = Command::new(bin)
        .env("MOCO_HELP_MARKDOWN", "1")
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

#[test]
fn the_cli_reference_is_the_clap_definitions() {
    let train = Path::new(env!("CARGO_BIN_EXE_moco-train"));
    let dir = train.parent().unwrap();
    let (export, infer) = (dir.join("moco-export"), dir.join("moco-infer"));
    if !export.exists() || !infer.exists() {
        eprintln!("skipped: moco-export/moco-infer are not built beside moco-train (cargo test --workspace builds them)");
        return;
    }
    let generated = format!(
        "<!-- Generated from the clap definitions: MOCO_BLESS=1 cargo test --release -p moco-trainer --test cli_docs -->\n\n{}\n{}\n{}",
        markdown(train),
        markdown(&export),
        markdown(&infer)
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/cli.md");
    if std::env::var_os("MOCO_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/cli.md is out of date: MOCO_BLESS=1 cargo test --release -p moco-trainer --test cli_docs"
    );
}

#[test]
fn completions_are_written_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let o = Command::new(env!("CARGO_BIN_EXE_moco-train"))
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(o.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(
            text.contains("pretrain") && text.contains("queue-size"),
            "{shell}"
        );
    }
}

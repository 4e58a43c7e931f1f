//! `--config RUN/config.json`: a run repeated from its record. Every `config.json` of `pretrain`
//! and `linear` keeps the flags that built the run (`command_line`: path values made absolute,
//! flags of the invocation such as `--resume` left out). `--config` puts those flags in front of
//! the ones given now, less every flag given now and every flag one given now conflicts with,
//! so a flag on the command line overrides the recorded one; `bench-step --config` measures the
//! step of a recorded pretraining run. The record is kept as flags rather than as the decided
//! configuration because flags are what the checks, the presets and the methods' recipes start
//! from: a repeat takes the path the run took. This file needs no libtorch: the `config_json`
//! fuzz target includes it by path.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

pub const FLAG: &str = "--config";

/// Flags of one invocation, not of the run it describes.
const NOT_RECORDED: &[&str] = &["config", "resume", "json", "quiet", "nproc"];

/// The commands that take `--config`, and the command whose record each reads (bench-step
/// measures the step of a pretraining run).
const COMMANDS: &[(&str, &str)] = &[
    ("pretrain", "pretrain"),
    ("linear", "linear"),
    ("bench-step", "pretrain"),
];

fn record_of(sub: &str) -> Option<&'static str> {
    COMMANDS.iter().find(|(c, _)| *c == sub).map(|(_, r)| *r)
}

/// One flag as given: its clap id and its tokens (`--lr 0.1`, `--lr=0.1` or `--no-knn`).
struct Given {
    id: String,
    tokens: Vec<String>,
}

/// `argv` with a `--config FILE` replaced by the recorded flags (non-UTF-8 arguments are read
/// lossily when a `--config` is given).
pub fn expand(cli: &clap::Command, argv: Vec<OsString>) -> Result<Vec<OsString>> {
    let Some(sub) = argv.get(1).and_then(|s| s.to_str()) else {
        return Ok(argv);
    };
    let (Some(of), Some(cmd)) = (record_of(sub), cli.find_subcommand(sub)) else {
        return Ok(argv);
    };
    let rest: Vec<String> = argv[2..]
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let now = group(cmd, &rest);
    let Some(file) = now.iter().find(|g| g.id == "config").map(value) else {
        return Ok(argv);
    };
    let recorded = group(cmd, &read_command_line(Path::new(&file), of)?);
    let overridden = |r: &Given| {
        now.iter()
            .any(|g| g.id == r.id || conflicts(cmd, &g.id, &r.id))
    };
    let mut out: Vec<OsString> = argv[..2].to_vec();
    let kept = recorded.iter().filter(|r| !overridden(r));
    for g in kept.chain(now.iter().filter(|g| g.id != "config")) {
        out.extend(g.tokens.iter().map(OsString::from));
    }
    Ok(out)
}

/// The flags of a command line worth recording, path values made absolute.
pub fn record(cmd: &clap::Command, tokens: &[OsString]) -> Vec<String> {
    let tokens: Vec<String> = tokens
        .iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut out = Vec::new();
    for g in group(cmd, &tokens) {
        if NOT_RECORDED.contains(&g.id.as_str()) {
            continue;
        }
        let path = cmd
            .get_arguments()
            .find(|a| a.get_id() == g.id.as_str())
            .is_some_and(|a| a.get_value_parser().type_id() == std::any::TypeId::of::<PathBuf>());
        if path {
            let v = value(&g);
            let abs = std::path::absolute(&v).unwrap_or_else(|_| PathBuf::from(&v));
            out.push(
                g.tokens[0]
                    .split('=')
                    .next()
                    .unwrap_or_default()
                    .to_string(),
            );
            out.push(abs.display().to_string());
        } else {
            out.extend(g.tokens);
        }
    }
    out
}

/// What `config.json` records of a command line (`argv` after `--config` was expanded): the
/// flags of `pretrain` and `linear`, nothing of the other commands.
pub fn command_line(cli: &clap::Command, argv: &[OsString]) -> Vec<String> {
    let sub = argv.get(1).and_then(|s| s.to_str()).unwrap_or_default();
    match cli.find_subcommand(sub) {
        Some(cmd) if record_of(sub) == Some(sub) => record(cmd, &argv[2..]),
        _ => Vec::new(),
    }
}

fn read_command_line(file: &Path, of: &str) -> Result<Vec<String>> {
    let shown = file.display();
    let text =
        std::fs::read_to_string(file).with_context(|| format!("{FLAG} {shown}: cannot read"))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{FLAG} {shown}: not a config.json"))?;
    match v.get("command").and_then(|c| c.as_str()) {
        Some(c) if c == of => {}
        Some(c) => bail!("{FLAG} {shown}: written by `moco-train {c}`, not `{of}`"),
        None => bail!("{FLAG} {shown}: not a config.json of moco-train (no `command`)"),
    }
    let Some(line) = v.get("command_line").and_then(|l| l.as_array()) else {
        bail!("{FLAG} {shown}: no `command_line` (written by an older moco-train)");
    };
    line.iter()
        .map(|t| t.as_str().map(str::to_string))
        .collect::<Option<Vec<_>>>()
        .with_context(|| format!("{FLAG} {shown}: `command_line` holds a non-string"))
}

/// Tokens grouped by the flag they belong to; a token no flag claims stands alone (clap will
/// refuse it with its own message).
fn group(cmd: &clap::Command, tokens: &[String]) -> Vec<Given> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let t = &tokens[i];
        let long = t
            .strip_prefix("--")
            .map(|l| l.split('=').next().unwrap_or(l));
        let arg = long.and_then(|l| cmd.get_arguments().find(|a| a.get_long() == Some(l)));
        let (id, n) = match arg {
            Some(a) if a.get_action().takes_values() && !t.contains('=') => {
                (a.get_id().to_string(), 2)
            }
            Some(a) => (a.get_id().to_string(), 1),
            None => (String::new(), 1),
        };
        let end = (i + n).min(tokens.len());
        out.push(Given {
            id,
            tokens: tokens[i..end].to_vec(),
        });
        i = end;
    }
    out
}

fn value(g: &Given) -> String {
    match g.tokens.as_slice() {
        [flag] => flag
            .split_once('=')
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
        [_, v, ..] => v.clone(),
        [] => String::new(),
    }
}

fn conflicts(cmd: &clap::Command, a: &str, b: &str) -> bool {
    let find = |id: &str| cmd.get_arguments().find(|x| x.get_id() == id);
    match (find(a), find(b)) {
        (Some(x), Some(y)) => {
            cmd.get_arg_conflicts_with(x)
                .iter()
                .any(|c| c.get_id() == y.get_id())
                || cmd
                    .get_arg_conflicts_with(y)
                    .iter()
                    .any(|c| c.get_id() == x.get_id())
        }
        _ => false,
    }
}

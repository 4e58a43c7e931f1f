//! `pretrain --cuda-graph`: refused where it cannot run, and on a CUDA device held against the
//! plain step — one start, eight steps each (three eager, the capture, four replays), then
//! `moco-train compare` at float32's bounds on every step's loss and the final networks. Without
//! a CUDA device that half says so and skips; the captured step's inputs are checked on the CPU
//! by tests/tests/capturable_step.rs.

mod common;

use common::{fails_with, method_args, pretrain_args, run, stderr};

#[test]
fn cuda_graph_is_refused_on_the_cpu_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let args = pretrain_args(
        &dir.path().join("run"),
        &["--device", "cpu", "--cuda-graph"],
    );
    fails_with(&args, "--cuda-graph: captures work queued on a CUDA device");
}

fn graph_agrees_with_eager(method: &str) {
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("init.safetensors");
    let init_arg = init.display().to_string();
    let o = run(&method_args(
        &dir.path().join("init"),
        method,
        &["--device", "cpu", "--save-init", &init_arg],
    ));
    assert!(o.status.success(), "{method} --save-init: {}", stderr(&o));
    let steps = [
        "--device",
        "cuda",
        "--no-tf32",
        "--init-from",
        &init_arg,
        "--steps",
        "8",
    ];
    let runs = [("eager", false), ("graph", true)].map(|(name, graph)| {
        let out = dir.path().join(name);
        let mut extra = steps.to_vec();
        extra.extend(["--checkpoint-every", "8"]);
        if graph {
            extra.push("--cuda-graph");
        }
        let o = run(&method_args(&out, method, &extra));
        assert!(o.status.success(), "{method} {name}: {}", stderr(&o));
        out.display().to_string()
    });
    let o = run(&[
        "compare",
        &runs[1],
        &runs[0],
        "--precision",
        "float32",
        "--json",
    ]);
    eprintln!("{method}: {}", String::from_utf8_lossy(&o.stdout).trim());
    assert!(
        o.status.success(),
        "{method}: graph vs eager: {}",
        stderr(&o)
    );
}

#[test]
fn cuda_graph_step_matches_the_eager_step_on_a_gpu() {
    if !tch::Cuda::is_available() {
        eprintln!(
            "skipped: no CUDA device (capture and replay need one; the captured step's inputs \
             are checked on the CPU by tests/tests/capturable_step.rs)"
        );
        return;
    }
    for method in ["mocov2", "mocov3", "simclr", "byol"] {
        graph_agrees_with_eager(method);
    }
}

//! The readers of files from strangers, each driven as its command drives it, from the bytes of
//! one input: what each fuzz target runs, and what tests/tests/fuzz_corpora.rs replays the saved
//! corpora through on stable. Each must end in a value or an error for any bytes — a panic, an
//! abort or a hang is a finding. Written once here and included by both.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

#[path = "../../trainer/src/cli/config_file.rs"]
mod config_file;

/// A scratch folder of this process, made once.
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moco-fuzz-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// A file path in this process's scratch folder.
pub fn scratch(file: &str) -> PathBuf {
    scratch_dir("files").join(file)
}

/// `train_label_tensor.pt`: labels or an error; parsing is a pure function of the bytes.
pub fn pt_labels(data: &[u8]) {
    if let Ok(labels) = datasets::pt_labels::parse_label_tensor(data) {
        assert_eq!(
            Some(labels),
            datasets::pt_labels::parse_label_tensor(data).ok()
        );
    }
}

/// The image path of every command: decode (PNG/JPEG of any colour type, bit depth and size),
/// then the eval transform (resize the shorter side, center crop, CHW floats).
pub fn image_decode(data: &[u8]) {
    if let Ok(img) = datasets::decode::decode_bytes(data, Path::new("fuzz.png")) {
        let p = models::Preprocess::default();
        let t = datasets::transform::eval_tensor(img, &p);
        assert_eq!(t.len(), 3 * (p.crop * p.crop) as usize);
    }
}

/// What moco-infer reads from a model file before handing it to a runtime: the protobuf, the
/// input/output shapes and the `moco.*` metadata.
pub fn onnx_metadata(data: &[u8]) {
    let _ = infer::parse_model_info(data, Path::new("fuzz.onnx"));
}

/// `--encoder FILE`: a `torch.save` archive (or anything else) through the path knn, linear,
/// label-request and export take — sniffing, the zip, the restricted pickle, the state_dict and
/// backbone prefix, storages with offsets and strides, f16/bf16 widening — then the
/// architecture's names and shapes.
pub fn torch_checkpoint(data: &[u8]) {
    let path = scratch("checkpoint.pth");
    std::fs::write(&path, data).expect("scratch file");
    if let Ok(map) = models::EncoderFile::new(&path).load() {
        if let Ok(arch) = models::ResNetDesc::detect_arch(&map, "fuzz") {
            let desc = models::ResNetDesc::new(arch);
            let _ = map.check(&desc.tensors(), "fuzz", arch.name(), |n| {
                n.starts_with("fc.")
            });
        }
    }
}

/// A safetensors file as an encoder (`--encoder`) and as a classifier (`--classifier`): header,
/// offsets, dtypes, shapes and the checks against resnet18's names.
pub fn safetensors_weights(data: &[u8]) {
    let path = scratch("weights.safetensors");
    std::fs::write(&path, data).expect("scratch file");
    let _ = models::ClassifierFile::load(&path, 512);
    if let Ok(map) = models::EncoderFile::new(&path).load() {
        let desc = models::ResNetDesc::new(models::Arch::Resnet18);
        let _ = map.check(&desc.tensors(), "fuzz", "resnet18", |n| {
            n.starts_with("fc.")
        });
    }
}

/// `merge-labels` with a stranger's CSV files: the request CSV and the returned labels CSV,
/// split at the first NUL byte (without one, a valid request and the input as the labels). A
/// refused merge leaves no new root behind.
pub fn merge_labels_csv(data: &[u8]) {
    let root = tiny_dataset();
    let (request, labels) = match data.iter().position(|&b| b == 0) {
        Some(i) => (data[..i].to_vec(), &data[i + 1..]),
        None => (tiny_request(), data),
    };
    let dir = scratch_dir("merge");
    let (req, ret, out) = (
        dir.join("request.csv"),
        dir.join("returned.csv"),
        dir.join("new"),
    );
    std::fs::write(&req, request).expect("scratch file");
    std::fs::write(&ret, labels).expect("scratch file");
    let _ = std::fs::remove_dir_all(&out);
    let cfg = datasets::merge_labels::MergeLabelsConfig::for_files(root, &req, &ret, &out);
    if datasets::merge_labels::run(&cfg).is_err() {
        assert!(!out.exists(), "a refused merge left {}", out.display());
    }
}

/// An ONNX model as moco-infer loads it: the interface and `moco.*` metadata checks, then
/// tract's import, optimisation and one batch of one image at the model's crop (bounded: a crop
/// past 128 pixels is not run).
pub fn onnx_model(data: &[u8]) {
    use infer::backend::Backend;
    let path = scratch("model.onnx");
    let Ok(info) = infer::parse_model_info(data, &path) else {
        return;
    };
    std::fs::write(&path, data).expect("scratch file");
    let crop = info.preprocess.crop as usize;
    if crop == 0 || crop > 128 {
        return;
    }
    if let Ok(mut tract) = infer::backend::tract_backend::TractBackend::new(&path, 1) {
        let _ = tract.run(&vec![0.5; 3 * crop * crop], 1, crop);
    }
}

/// `--config FILE`: a config.json from anywhere, expanded into a command line as `pretrain` and
/// `linear` expand it (the record checked, its flags grouped and merged with those given now),
/// then parsed and recorded again. The command is a stand-in with every kind of flag moco-train
/// has — values, paths, switches, a conflicting pair — because the real one is defined in the
/// trainer, which links libtorch.
pub fn config_json(data: &[u8]) {
    let path = scratch("config.json");
    std::fs::write(&path, data).expect("scratch file");
    let cli = stand_in_cli();
    for sub in ["pretrain", "linear"] {
        let argv: Vec<std::ffi::OsString> = ["moco-train", sub, "--config"]
            .iter()
            .map(|a| a.into())
            .chain([path.clone().into_os_string(), "--lr".into(), "0.2".into()])
            .collect();
        if let Ok(argv) = config_file::expand(&cli, argv) {
            let _ = cli.clone().try_get_matches_from(&argv);
            let _ = config_file::command_line(&cli, &argv);
        }
    }
}

fn stand_in_cli() -> clap::Command {
    use clap::{value_parser, Arg, ArgAction, Command};
    let path = |id: &'static str, long: &'static str| {
        Arg::new(id).long(long).value_parser(value_parser!(PathBuf))
    };
    let switch =
        |id: &'static str, long: &'static str| Arg::new(id).long(long).action(ArgAction::SetTrue);
    let run = |name: &'static str| {
        Command::new(name)
            .arg(path("data", "data").required(true))
            .arg(path("out", "out").required(true))
            .arg(path("config", "config"))
            .arg(Arg::new("lr").long("lr").value_parser(value_parser!(f64)))
            .arg(
                Arg::new("steps")
                    .long("steps")
                    .value_parser(value_parser!(u64)),
            )
            .arg(Arg::new("splits").long("splits"))
            .arg(path("tensorboard", "tensorboard").conflicts_with("no_tensorboard"))
            .arg(switch("no_tensorboard", "no-tensorboard"))
            .arg(switch("no_knn", "no-knn"))
            .arg(switch("resume", "resume"))
            .arg(switch("json", "json"))
    };
    Command::new("moco-train")
        .subcommand(run("pretrain"))
        .subcommand(run("linear"))
}

/// A resume state edited by hand, as `pretrain --resume` and `linear --resume` read it: the
/// safetensors file (sealed again with its checksum, as a deliberate editor would), the state,
/// the run record (older records translated) held against this run's, and a probe's position
/// against its run. Restoring the tensors into a network needs every tensor of resnet18, more
/// than a fuzz input holds: trainer/tests/cli.rs edits real checkpoints for that part.
pub fn run_state(data: &[u8]) {
    use trainer::train::checkpoint;
    let Ok(mut map) = models::TensorMap::from_bytes(data) else {
        return;
    };
    checkpoint::sign(&mut map);
    let Ok(bytes) = map.to_bytes() else {
        return;
    };
    let path = scratch("step-000000002.safetensors");
    std::fs::write(&path, bytes).expect("scratch file");
    if let Ok((map, state)) = checkpoint::read(&path) {
        if let Ok(stored) = state.algorithm() {
            let _ = this_run().0.differences(&stored);
        }
        let _ = trainer::eval::linear::resume::position(&map, &this_run().1, 40);
    }
}

/// The pretraining record and the linear configuration the states are held against (written
/// by `pretrain` and `linear`, their paths renamed).
fn this_run() -> &'static (
    trainer::config::Algorithm,
    trainer::eval::linear::LinearConfig,
) {
    static RUN: OnceLock<(
        trainer::config::Algorithm,
        trainer::eval::linear::LinearConfig,
    )> = OnceLock::new();
    RUN.get_or_init(|| {
        let algorithm = serde_json::from_str(include_str!("run_state/algorithm.json"))
            .expect("a pretraining record");
        let linear = serde_json::from_str(include_str!("run_state/linear.json"))
            .expect("a linear configuration");
        (algorithm, linear)
    })
}

/// A folder-layout dataset: 2 classes × 2 train images, 4 unlabeled, written once.
pub fn tiny_dataset() -> &'static Path {
    static ROOT: OnceLock<PathBuf> = OnceLock::new();
    ROOT.get_or_init(|| {
        let root = scratch_dir("data").join("root");
        if !root.exists() {
            let cfg = datasets::synth::SynthConfig {
                classes: 2,
                train_per_class: 2,
                val_per_class: 1,
                unlabeled: 4,
                seed: 0,
                layout: datasets::Format::Folder,
            };
            datasets::synth::write_dataset(&root, &cfg, false).expect("tiny dataset");
        }
        root
    })
}

/// A valid request over the tiny dataset's unlabeled split (what label-request writes).
pub fn tiny_request() -> Vec<u8> {
    let pool =
        datasets::open(tiny_dataset(), datasets::Split::Unlabeled, None).expect("unlabeled split");
    let mut csv = String::from("rank,index,image,score,predicted,confidence\n");
    for (i, s) in pool.samples.iter().enumerate() {
        csv.push_str(&format!("{i},{i},{},0.5,0,0.5\n", s.name));
    }
    csv.into_bytes()
}

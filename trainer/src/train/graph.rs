//! `pretrain --cuda-graph`: the training step captured once as a CUDA graph and replayed, so the
//! host launches one graph a step instead of hundreds of kernels. The captured step reads its
//! inputs from fixed tensors — the two views, the lr, and what the method stages
//! ([`Method::stage`]: shuffle permutations, momentum) — which are set before every replay, and
//! leaves its loss in a fixed tensor. A replayed step logs the loss only (the method's own
//! metrics read the device, which a graph cannot).

use anyhow::Result;
use tch::{Device, Tensor};

use super::step::{train_step, StepOut, StepState};
use crate::methods::{Method, StepCtx, Views};
use crate::nn::optim::Lr;
use crate::runtime::cuda_graph::CudaGraph;
use crate::runtime::faults::{planted, Fault};

/// Planted fault: the fixed inputs left as the first step set them (views, lr, staged values).
pub const INPUTS_NOT_SET: Fault = "capturable step inputs not set";

/// Eager steps before the capture: cuDNN's algorithm search, the momentum buffers and the
/// caching allocator's pools settle on them first (PyTorch's recipe warms up 3 iterations).
pub const WARMUP_STEPS: u64 = 3;

/// The fixed tensors a captured step reads and writes.
struct Io {
    views: Views,
    lr: Tensor,
    loss: Option<Tensor>,
}

pub struct GraphStep {
    /// None: the capturable step runs eagerly (on the CPU, to check it against the plain step).
    graph: Option<CudaGraph>,
    warmup_left: u64,
    io: Option<Io>,
}

impl GraphStep {
    /// A graph on `device` (CUDA); `method` is made capturable.
    pub fn new(method: &mut dyn Method, device: Device) -> Result<Self> {
        let graph = CudaGraph::new(device)?;
        method.make_capturable()?;
        Ok(GraphStep {
            graph: Some(graph),
            warmup_left: WARMUP_STEPS,
            io: None,
        })
    }

    /// The capturable step without a graph, on any device: what a test compares with the plain
    /// step where no GPU is.
    pub fn eager(method: &mut dyn Method) -> Result<Self> {
        method.make_capturable()?;
        Ok(GraphStep {
            graph: None,
            warmup_left: u64::MAX,
            io: None,
        })
    }

    /// One training step: the inputs set, then an eager step (warm-up), the capture and its
    /// first replay, or a replay.
    pub fn step(
        &mut self,
        method: &mut dyn Method,
        st: StepState,
        views: &Views,
        ctx: &StepCtx,
        lr: f64,
    ) -> Result<StepOut> {
        if !planted(INPUTS_NOT_SET) {
            method.stage(ctx)?;
        }
        let GraphStep {
            graph,
            warmup_left,
            io,
        } = self;
        let io = set_inputs(io, views, lr);
        let inputs = &io.views;
        let graph = match graph {
            Some(g) if *warmup_left == 0 => g,
            _ => {
                *warmup_left = warmup_left.saturating_sub(1);
                return train_step(method, st, inputs, ctx, Lr::Tensor(&io.lr), false);
            }
        };
        if !graph.is_captured() {
            let out =
                graph.capture(|| train_step(method, st, inputs, ctx, Lr::Tensor(&io.lr), false))?;
            io.loss = Some(out.loss);
        }
        graph.replay()?;
        models_tch::batch_norm::groups_moved_by_replay();
        let loss = io.loss.as_ref().expect("captured with the graph").copy();
        Ok(StepOut {
            loss,
            fields: Vec::new(),
            taken: true,
        })
    }
}

/// The fixed inputs, allocated by the first step and overwritten by every later one.
fn set_inputs<'a>(io: &'a mut Option<Io>, views: &Views, lr: f64) -> &'a mut Io {
    let io = io.get_or_insert_with(|| Io {
        views: Views {
            v1: views.v1.zeros_like(),
            v2: views.v2.zeros_like(),
            small: views.small.iter().map(Tensor::zeros_like).collect(),
        },
        lr: Tensor::zeros([], (views.v1.kind(), views.v1.device())),
        loss: None,
    });
    if planted(INPUTS_NOT_SET) {
        return io;
    }
    tch::no_grad(|| {
        io.views.v1.copy_(&views.v1);
        io.views.v2.copy_(&views.v2);
        for (to, from) in io.views.small.iter_mut().zip(&views.small) {
            to.copy_(from);
        }
        let _ = io.lr.fill_(lr);
    });
    io
}

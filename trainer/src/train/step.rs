//! One training step, the same for every method and the one the parity tests drive: forward
//! under autocast, backward (scaled for fp16), the gradients averaged over ranks, the loss scaler,
//! the optimizer step, then the method's own after-step work.

use anyhow::Result;
use tch::{Kind, Tensor};

use crate::methods::{Method, StepCtx, Views};
use crate::nn::amp::Autocast;
use crate::nn::optim::{LossScaler, Lr, Optimizer};
use crate::runtime::dist::Dist;

/// Everything a step changes besides the method.
pub struct StepState<'a> {
    pub opt: &'a mut Optimizer,
    pub scaler: &'a mut Option<LossScaler>,
    pub dist: Option<&'a Dist>,
    /// Mixed precision around the forward (None: `--amp off`, nothing switched).
    pub autocast: Option<Autocast>,
    /// The kind of the loss and the variables (float64 in the check mode).
    pub kind: Kind,
}

/// What a step leaves for the log.
pub struct StepOut {
    /// This rank's report of the loss (detached; averaged over ranks only when logged).
    pub loss: Tensor,
    /// The method's metrics, when asked for.
    pub fields: Vec<(&'static str, f64)>,
    /// False when fp16's loss scaler skipped the update (inf/NaN gradients).
    pub taken: bool,
}

/// One optimizer step of `method` on this rank's views at learning rate `lr`.
pub fn train_step(
    method: &mut dyn Method,
    st: StepState,
    views: &Views,
    ctx: &StepCtx,
    lr: Lr,
    log: bool,
) -> Result<StepOut> {
    st.opt.zero_grad();
    let loss = crate::nn::amp::autocast(st.autocast, || method.loss_of(views, ctx))??;
    let graph = loss.graph.to_kind(st.kind);
    let scale = st.scaler.as_ref().map_or(1.0, |sc| sc.scale);
    (&graph * scale).backward();
    if let Some(d) = st.dist {
        // The global batch's loss: the mean of the ranks' gradients.
        d.average_gradients(st.opt.params.iter().map(|(_, p)| p))?;
    }
    let taken = match st.scaler.as_mut() {
        Some(sc) => sc.unscale_and_check(st.opt)?,
        None => true,
    };
    if taken {
        st.opt.step_at(lr)?;
    }
    let fields = method.after_step(ctx, log)?;
    Ok(StepOut {
        loss: loss.value.to_kind(st.kind),
        fields,
        taken,
    })
}

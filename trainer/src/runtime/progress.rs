//! Progress bars on stderr (hidden with `--quiet`/`--json` or when stderr is not a terminal).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

pub fn bar(len: u64, message: &str, visible: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(len),
        if visible {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        },
    );
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template")
            .progress_chars("=> "),
    );
    bar.set_message(message.to_string());
    bar
}

/// For work of unknown length: a count and a rate.
pub fn counter(message: &str, visible: bool) -> ProgressBar {
    let bar = bar(0, message, visible);
    bar.set_length(u64::MAX);
    bar.set_style(ProgressStyle::with_template("{msg} {pos} {per_sec}").expect("static template"));
    bar
}

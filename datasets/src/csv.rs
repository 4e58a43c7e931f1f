//! The predictions CSV of SPEC (`image,prediction,label`), written the same way by `moco-infer`
//! and by `moco-train linear`, so the two can be compared line for line.

/// One CSV field, quoted when it holds a comma, quote or line break.
pub fn field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub const HEADER: &str = "image,prediction,label\n";

/// One row: the label is empty when unknown.
pub fn row(image: &str, prediction: usize, label: Option<usize>) -> String {
    let label = label.map(|l| l.to_string()).unwrap_or_default();
    format!("{},{prediction},{label}\n", field(image))
}

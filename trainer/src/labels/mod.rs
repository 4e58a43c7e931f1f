//! Which unlabeled images to send for labeling (`label-request`), and the study that measures
//! each strategy against random picks (`label-study`).

pub mod request;
pub mod study;

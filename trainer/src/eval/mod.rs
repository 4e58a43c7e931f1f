//! What a frozen (or fine-tuned) encoder is worth: features, weighted kNN, the linear probe,
//! conv1's feature maps.

pub mod feature_maps;
pub mod features;
pub mod knn;
pub mod linear;

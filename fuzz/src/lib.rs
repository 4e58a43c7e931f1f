//! The fuzz targets' bodies (`exercise`), shared with the stable replay of the saved corpora.
pub mod exercise;

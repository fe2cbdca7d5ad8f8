//! The CRS components, one module each, all behind `framework::Component`.
pub mod criu;
pub mod none;
pub mod self_;

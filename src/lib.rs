//! libopalcrs: Open MPI's OPAL checkpoint/restart service (OPAL CRS) re-implemented in
//! Rust, with the original C ABI (`capi`) over a plain Rust core: parameters
//! (`params`), the CRS framework and its components, the runtime inside a process, the
//! snapshot store and the control protocol used by the tools.

pub mod capi;
pub mod codes;
pub mod components;
pub mod control;
mod elf;
pub mod error;
pub mod framework;
pub mod job;
pub mod output;
pub mod owner;
pub mod params;
pub mod restart;
pub mod runtime;
pub mod snapshot;
mod tcp;
pub mod tools;

//! Sets the shared library's SONAME (independent of the crate version, so the ABI
//! version moves only when the C ABI breaks) and bakes in the install prefix used for
//! the system parameter files.
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libopalcrs.so.0");
    let prefix = std::env::var("OPALCRS_PREFIX").unwrap_or_else(|_| "/usr/local".to_string());
    println!("cargo:rustc-env=OPALCRS_PREFIX={prefix}");
    println!("cargo:rerun-if-env-changed=OPALCRS_PREFIX");
    println!("cargo:rerun-if-changed=build.rs");
}

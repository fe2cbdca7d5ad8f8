//! `opal-info`: parameters with their values and where each value came from.

mod common;
use common::*;
use std::path::PathBuf;

fn info() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_opal-info"))
}

#[test]
fn shows_values_and_their_sources() {
    let sb = Sandbox::new("info");
    let file = sb.path("params.conf");
    std::fs::write(&file, "crs_criu_log_level = 4\n").unwrap();
    let out = sb
        .command(info())
        .args(["--param", "crs", "all", "-mca", "crs_self_verbose", "3"])
        .env("OMPI_MCA_mca_base_param_files", &file)
        .env("OMPI_MCA_crs_self_prefix", "mine")
        .output()
        .unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stdout.contains(
            "parameter \"crs_self_prefix\" (current value: <mine>, data source: environment)"
        ),
        "{stdout}"
    );
    assert!(stdout.contains(
        "parameter \"crs_self_verbose\" (current value: <3>, data source: command line)"
    ));
    assert!(stdout.contains(&format!(
        "parameter \"crs_criu_log_level\" (current value: <4>, data source: file [{}])",
        file.display()
    )));
    assert!(stdout.contains(
        "parameter \"crs_base_snapshot_dir\" (current value: <none>, data source: default value)"
    ));
    assert!(!stdout.contains("opal_cr_signal"), "only the crs framework was asked for");

    let all = sb.command(info()).args(["--param", "all", "all", "--parsable"]).output().unwrap();
    let listing = text(&all).0;
    for def in opalcrs::params::PARAMS {
        assert!(listing.contains(&format!(":param:{}:value:", def.name)), "{} missing", def.name);
    }
    let none = sb.command(info()).args(["--param", "nosuch", "all"]).output().unwrap();
    assert_eq!(none.status.code(), Some(1));
    let bad = sb.command(info()).env("OMPI_MCA_opal_cr_signal", "x").output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad).1.contains("opal_cr_signal"));
}

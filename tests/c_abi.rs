//! The C ABI from real C programs: built three ways (-lopalcrs, pkg-config, the
//! original include paths), as PIE and non-PIE, and under ASAN/UBSAN; parameters from
//! the environment and files; exported symbols; the generated header; `make install`.

mod common;
use common::*;
use std::process::Command;

fn run_abi(exe: &std::path::Path, sb: &Sandbox) {
    let out = sb.command(exe).output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(
        out.status.success() && stdout.contains("abi ok"),
        "{}: {stdout}{stderr}",
        exe.display()
    );
}

#[test]
fn abi_checks_pass_as_pie_and_non_pie() {
    let sb = Sandbox::new("abi");
    run_abi(&cc("abi.c", "abi-pie", &["-fPIE", "-pie"]), &sb);
    // A non-PIE program gets a copy relocation of opal_crs: library and program must
    // still see one table.
    run_abi(&cc("abi.c", "abi-nopie", &["-fno-PIE", "-no-pie"]), &sb);
}

#[test]
fn abi_checks_pass_under_asan_and_ubsan() {
    let sb = Sandbox::new("abi-asan");
    let exe = cc(
        "abi.c",
        "abi-asan",
        &["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"],
    );
    let out = sb.command(&exe).env("ASAN_OPTIONS", "detect_leaks=1").output().unwrap();
    let (stdout, stderr) = text(&out);
    assert!(out.status.success() && stdout.contains("abi ok"), "{stdout}{stderr}");
}

/// Renders pkgconfig/opalcrs.pc.in for a tree-local prefix, as `make uninstalled-pc`.
fn uninstalled_pc(sb: &Sandbox) -> std::path::PathBuf {
    let template = std::fs::read_to_string(repo().join("pkgconfig/opalcrs.pc.in")).unwrap();
    let pc = template
        .replace("@PREFIX@", repo().to_str().unwrap())
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"))
        .replace("libdir=${exec_prefix}/lib", &format!("libdir={}", lib_dir().display()));
    let dir = sb.path("pkgconfig");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("opalcrs.pc"), pc).unwrap();
    dir
}

#[test]
fn pkg_config_gives_the_exact_flags_and_builds_an_unchanged_program() {
    let sb = Sandbox::new("pkgconfig");
    let dir = uninstalled_pc(&sb);
    let flags = Command::new("pkg-config")
        .args(["--cflags", "--libs", "opalcrs"])
        .env("PKG_CONFIG_PATH", &dir)
        .output()
        .unwrap();
    let flags = String::from_utf8(flags.stdout).unwrap();
    let expected = format!(
        "-I{}/include -L{} -lopalcrs -Wl,--export-dynamic",
        repo().display(),
        lib_dir().display()
    );
    assert_eq!(flags.trim(), expected);
    let exe = sb.path("counter");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cc -Wall -Wextra -Werror -o {} {} {} -Wl,-rpath,{}",
            exe.display(),
            repo().join("examples/counter.c").display(),
            flags.trim(),
            lib_dir().display()
        ))
        .status()
        .unwrap();
    assert!(status.success());
    let out = sb.command(&exe).arg("3").output().unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    assert!(text(&out).0.contains("done at 3"));
}

fn init_rc(sb: &Sandbox, env: &[(&str, &str)]) -> (String, String) {
    let mut command = sb.command(cc("abi.c", "abi-pie", &["-fPIE", "-pie"]));
    command.arg("init-rc");
    for (k, v) in env {
        command.env(k, v);
    }
    text(&command.output().unwrap())
}

#[test]
fn parameters_from_environment_and_files_and_bad_values() {
    let sb = Sandbox::new("params");
    let (out, _) = init_rc(&sb, &[]);
    assert_eq!(out.trim(), "opal_init rc=0 selected=yes");
    // C/R off: opal_init succeeds, nothing selected.
    let (out, _) = init_rc(&sb, &[("OMPI_MCA_ft_cr_enabled", "0")]);
    assert_eq!(out.trim(), "opal_init rc=0 selected=no");
    let (out, _) = init_rc(&sb, &[("OMPI_MCA_ft_cr_enabled", "disabled")]);
    assert_eq!(out.trim(), "opal_init rc=0 selected=no");
    // Components the original had but we do not.
    let (out, err) = init_rc(&sb, &[("OMPI_MCA_crs", "blcr")]);
    assert_eq!(out.trim(), "opal_init rc=-16 selected=no");
    assert!(err.contains("'blcr' is not available on this system"), "{err}");
    let (out, err) = init_rc(&sb, &[("OMPI_MCA_crs", "bogus")]);
    assert_eq!(out.trim(), "opal_init rc=-5 selected=no");
    assert!(err.contains("crs") && err.contains("bogus"), "{err}");
    // A bad number names the parameter, the source and what is accepted.
    let (out, err) = init_rc(&sb, &[("OMPI_MCA_opal_cr_signal", "abc")]);
    assert_eq!(out.trim(), "opal_init rc=-5 selected=no");
    assert!(
        err.contains("opal_cr_signal")
            && err.contains("OMPI_MCA_opal_cr_signal")
            && err.contains("integer"),
        "{err}"
    );
    // The same from a file, which names the file.
    let file = sb.path("bad.conf");
    std::fs::write(&file, "opal_cr_signal = many\n").unwrap();
    let (out, err) = init_rc(&sb, &[("OMPI_MCA_mca_base_param_files", file.to_str().unwrap())]);
    assert_eq!(out.trim(), "opal_init rc=-5 selected=no");
    assert!(err.contains(file.to_str().unwrap()), "{err}");
    // An explicitly named file that does not exist.
    let (out, err) = init_rc(&sb, &[("OMPI_MCA_mca_base_param_files", "/no/such/file.conf")]);
    assert!(out.contains("rc=-13"), "{out}");
    assert!(err.contains("/no/such/file.conf"), "{err}");
    // Environment beats files; the leftmost file wins; unknown names are ignored.
    let (first, second) = (sb.path("first.conf"), sb.path("second.conf"));
    std::fs::write(&first, "ft_cr_enabled = 0\nbtl_tcp_if_include = eth0\n").unwrap();
    std::fs::write(&second, "ft_cr_enabled = 1\n").unwrap();
    let files = format!("{}:{}", first.display(), second.display());
    let (out, _) = init_rc(&sb, &[("OMPI_MCA_mca_base_param_files", &files)]);
    assert_eq!(out.trim(), "opal_init rc=0 selected=no");
    let (out, _) =
        init_rc(&sb, &[("OMPI_MCA_mca_base_param_files", &files), ("OMPI_MCA_ft_cr_enabled", "1")]);
    assert_eq!(out.trim(), "opal_init rc=0 selected=yes");
    let (out, _) = init_rc(&sb, &[("OMPI_MCA_btl_tcp_if_include", "eth0")]);
    assert_eq!(out.trim(), "opal_init rc=0 selected=yes");
}

#[test]
fn only_opal_symbols_leave_the_library() {
    let status = Command::new("bash")
        .arg(repo().join("scripts/check-elf-symbols.sh"))
        .arg(lib_dir().join("libopalcrs.so"))
        .status()
        .unwrap();
    assert!(status.success());
}

#[test]
fn the_committed_header_is_what_cbindgen_generates() {
    let cbindgen = ["/opt/opalcrs-tools/bin/cbindgen", "cbindgen"]
        .into_iter()
        .find(|c| {
            Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("0.27.0"))
        })
        .expect("cbindgen 0.27.0 is needed (scripts/install-deps.sh installs it)");
    let sb = Sandbox::new("header");
    let generated = sb.path("opal_crs.h");
    let out = Command::new(cbindgen)
        .current_dir(repo())
        .args(["--config", "cbindgen.toml", "--quiet", "--output"])
        .arg(&generated)
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let committed = std::fs::read_to_string(repo().join("include/opal_crs.h")).unwrap();
    // Only the C API's own names: internal constants of the core must not leak in.
    for line in committed.lines() {
        let name = if let Some(rest) = line.strip_prefix("#define ") {
            rest.split_whitespace().next()
        } else if let Some((_, rest)) =
            line.strip_prefix("typedef ").and_then(|l| l.split_once("(*"))
        {
            rest.split(')').next()
        } else if line.starts_with("typedef struct") {
            line.split_whitespace().nth(2)
        } else if line.starts_with("typedef ") {
            line.trim_end_matches(';').split_whitespace().last()
        } else {
            continue;
        };
        let name = name.unwrap_or_default();
        let ours = ["OPAL", "OMPI_", "opal_", "opalcrs_"].iter().any(|p| name.starts_with(p));
        assert!(ours, "foreign name {name:?} in the header: {line}");
    }
    assert!(
        committed == std::fs::read_to_string(&generated).unwrap(),
        "include/opal_crs.h is stale: regenerate it with `cbindgen --config cbindgen.toml --output include/opal_crs.h`"
    );
}

#[test]
fn the_readme_parameter_table_is_the_code_table() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let begin = "<!-- parameters:begin -->\n";
    let end = "<!-- parameters:end -->";
    let start = readme.find(begin).expect("README has the parameter table markers") + begin.len();
    let stop = readme[start..].find(end).expect("end marker") + start;
    let expected = opalcrs::params::markdown_table();
    if std::env::var_os("OPALCRS_BLESS").is_some() {
        let updated = format!("{}{}{}", &readme[..start], expected, &readme[stop..]);
        std::fs::write(repo().join("README.md"), updated).unwrap();
        return;
    }
    assert!(
        readme[start..stop] == expected,
        "README parameter table is out of date; run with OPALCRS_BLESS=1 to rewrite it"
    );
}

#[test]
fn make_install_lays_out_a_usable_prefix() {
    let sb = Sandbox::new("install");
    let prefix = sb.path("prefix");
    let target = sb.path("target");
    let out = Command::new("make")
        .current_dir(repo())
        .args(["-s", "install"])
        .arg(format!("PREFIX={}", prefix.display()))
        .env("CARGO_TARGET_DIR", &target)
        .arg(format!("TARGET={}/release", target.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{:?}", text(&out));
    let lib = prefix.join("lib");
    let version = env!("CARGO_PKG_VERSION");
    assert!(lib.join(format!("libopalcrs.so.{version}")).is_file());
    assert_eq!(
        std::fs::read_link(lib.join("libopalcrs.so.0")).unwrap().to_str(),
        Some(&*format!("libopalcrs.so.{version}"))
    );
    assert_eq!(
        std::fs::read_link(lib.join("libopalcrs.so")).unwrap().to_str(),
        Some("libopalcrs.so.0")
    );
    assert!(lib.join("libopalcrs.a").is_file());
    for header in [
        "opal_crs.h",
        "opal_config.h",
        "opal/constants.h",
        "opal/runtime/opal.h",
        "opal/runtime/opal_cr.h",
        "opal/mca/crs/crs.h",
        "opal/mca/crs/base/base.h",
    ] {
        assert!(prefix.join("include").join(header).is_file(), "{header}");
    }
    assert!(
        prefix.join("bin/opal-checkpoint").is_file() && prefix.join("bin/opal-restart").is_file()
    );
    assert!(prefix.join("etc/openmpi-mca-params.conf").is_file());
    let pc = std::fs::read_to_string(lib.join("pkgconfig/opalcrs.pc")).unwrap();
    assert!(
        pc.contains(&format!("prefix={}", prefix.display()))
            && pc.contains("libdir=${exec_prefix}/lib"),
        "{pc}"
    );
    let status = Command::new("bash")
        .arg(repo().join("scripts/check-elf-symbols.sh"))
        .arg(lib.join(format!("libopalcrs.so.{version}")))
        .status()
        .unwrap();
    assert!(status.success());
    // An unchanged program builds with the installed pkg-config file and runs.
    let exe = sb.path("counter");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cc -o {} {} $(pkg-config --cflags --libs opalcrs)",
            exe.display(),
            repo().join("examples/counter.c").display()
        ))
        .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = sb.command(&exe).arg("2").env("LD_LIBRARY_PATH", &lib).output().unwrap();
    assert!(out.status.success() && text(&out).0.contains("done at 2"), "{:?}", text(&out));
    // The static library links too.
    let static_exe = sb.path("counter-static");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "cc -o {} {} -I{}/include {}/libopalcrs.a -Wl,--export-dynamic $(pkg-config --libs-only-other --static opalcrs | sed 's/-Wl,--export-dynamic//') -lpthread -ldl -lm",
            static_exe.display(),
            repo().join("examples/counter.c").display(),
            prefix.display(),
            lib.display()
        ))
        .env("PKG_CONFIG_PATH", lib.join("pkgconfig"))
        .status()
        .unwrap();
    assert!(status.success());
    let out = sb.command(&static_exe).arg("2").output().unwrap();
    assert!(out.status.success() && text(&out).0.contains("done at 2"), "{:?}", text(&out));
}

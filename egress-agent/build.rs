//! Compiles the C eBPF programs in `../egress-ebpf` with clang and leaves the objects in
//! OUT_DIR, from where `bpf` (egress.bpf.o) and `bpf::gate` (gate.bpf.o) embed them with
//! `include_bytes_aligned!`.

use std::{env, path::PathBuf, process::Command};

/// Every source and header: each is a `rerun-if-changed`.
const SOURCES: &[&str] = &[
    "egress.bpf.c",
    "gate.bpf.c",
    "egress_maps.h",
    "sock_common.h",
    "classify.h",
];
/// The translation units: (source, object written to OUT_DIR).
const OBJECTS: &[(&str, &str)] = &[
    ("egress.bpf.c", "egress.bpf.o"),
    ("gate.bpf.c", "gate.bpf.o"),
];
const CLANG_CANDIDATES: &[&str] = &["clang-19", "clang"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let src_dir = manifest.join("../egress-ebpf");
    for s in SOURCES {
        println!("cargo:rerun-if-changed={}", src_dir.join(s).display());
    }
    println!("cargo:rerun-if-env-changed=EGRESS_CLANG");
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());

    let clang = env::var("EGRESS_CLANG").ok().or_else(|| {
        CLANG_CANDIDATES
            .iter()
            .find(|c| Command::new(c).arg("--version").output().is_ok())
            .map(|c| c.to_string())
    });
    let Some(clang) = clang else {
        fail("clang not found: install the Debian packages `clang-19 libbpf-dev` (apt-get install clang-19 libbpf-dev)");
    };
    if !PathBuf::from("/usr/include/bpf/bpf_helpers.h").exists() {
        fail("libbpf headers not found (/usr/include/bpf/bpf_helpers.h): install the Debian package `libbpf-dev`");
    }
    let arch_include = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "/usr/include/x86_64-linux-gnu",
        Ok("aarch64") => "/usr/include/aarch64-linux-gnu",
        _ => "/usr/include",
    };
    for (src, obj) in OBJECTS {
        let status = Command::new(&clang)
            .args(["-target", "bpf", "-O2", "-g", "-Wall", "-Werror", "-c"])
            .arg(format!("-I{arch_include}"))
            .arg(src_dir.join(src))
            .arg("-o")
            .arg(out_dir.join(obj))
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => fail(&format!(
                "{clang} failed to compile egress-ebpf/{src} ({s})"
            )),
            Err(e) => fail(&format!("could not run {clang}: {e}")),
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    println!("cargo:warning={msg}");
    std::process::exit(1);
}

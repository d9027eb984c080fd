//! Finds libnexusquant and its header.
//!
//! In order:
//! 1. `NEXUSQUANT_LIB_DIR` (the directory holding libnexusquant.so), with the header
//!    from `NEXUSQUANT_INCLUDE_DIR` or, failing that, this checkout's `include/`;
//! 2. `pkg-config nexusquant`, which finds an installed library, or the build tree's
//!    uninstalled one with `PKG_CONFIG_PATH=<build>/pkgconfig-uninstalled`;
//! 3. the linker's default search path.
//!
//! The library directory is also written into the test, example and binary targets of
//! this package as an rpath, so `cargo test` runs against the library it linked.
use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn pkg_config_variable(name: &str) -> Option<String> {
    let tool = env::var("PKG_CONFIG").unwrap_or_else(|_| "pkg-config".to_string());
    let out = Command::new(tool).args([&format!("--variable={name}"), "nexusquant"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let value = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!value.is_empty()).then_some(value)
}

fn main() {
    for var in ["NEXUSQUANT_LIB_DIR", "NEXUSQUANT_INCLUDE_DIR", "PKG_CONFIG_PATH", "PKG_CONFIG"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let checkout_include = manifest.join("../../include");

    let (lib_dir, include_dir) = match env::var("NEXUSQUANT_LIB_DIR") {
        Ok(dir) if !dir.is_empty() => {
            (Some(dir), env::var("NEXUSQUANT_INCLUDE_DIR").ok().filter(|d| !d.is_empty()))
        }
        _ => (pkg_config_variable("libdir"), pkg_config_variable("includedir")),
    };
    if let Some(dir) = &lib_dir {
        let dir = Path::new(dir).canonicalize().unwrap_or_else(|_| PathBuf::from(dir));
        println!("cargo:rustc-link-search=native={}", dir.display());
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", dir.display());
        println!("cargo:lib_dir={}", dir.display());
    } else {
        println!(
            "cargo:warning=nexusquant: neither NEXUSQUANT_LIB_DIR nor pkg-config found the library; \
             relying on the linker's default search path"
        );
    }
    println!("cargo:rustc-link-lib=dylib=nexusquant");

    // The header the ABI test reads (tests/abi.rs).
    let header = include_dir
        .map(|d| PathBuf::from(d).join("nexusquant.h"))
        .filter(|h| h.exists())
        .unwrap_or_else(|| checkout_include.join("nexusquant.h"));
    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rustc-env=NEXUSQUANT_HEADER_PATH={}", header.display());
}

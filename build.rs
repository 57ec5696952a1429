//! Compiles `proto/medid/v1/*.proto` with protox (pure Rust; no system `protoc`), writes the
//! encoded descriptor set that server reflection serves and the list of gRPC method paths the
//! metrics name, and records the git commit the binary was built from (`--version`,
//! `medid_build_info`).

use std::{env, fs, path::PathBuf, process::Command};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/medid/v1/medid.proto"];
    println!("cargo:rerun-if-changed=proto");

    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(protos)?;

    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(
        out.join("medid_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )?;
    let fds = compiler.file_descriptor_set();
    let mut methods = Vec::new();
    for file in &fds.file {
        for service in &file.service {
            for method in &service.method {
                methods.push(format!(
                    "/{}.{}/{}",
                    file.package(),
                    service.name(),
                    method.name()
                ));
            }
        }
    }
    methods.sort();
    fs::write(
        out.join("rpc_methods.rs"),
        format!(
            "/// Every method path of medid's own gRPC services, sorted.\n\
             pub const MEDID_METHODS: [&str; {}] = {:?};\n",
            methods.len(),
            methods
        ),
    )?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;

    println!("cargo:rustc-env=MEDID_GIT_COMMIT={}", git_commit());
    Ok(())
}

/// The commit checked out (work-tree changes since are not marked); `unknown` outside a git
/// checkout (a source tarball) or without git.
fn git_commit() -> String {
    // Re-run when HEAD moves: the file itself (a branch switch) and the branch it names.
    println!("cargo:rerun-if-changed=.git/HEAD");
    if let Ok(head) = fs::read_to_string(".git/HEAD") {
        if let Some(branch) = head.strip_prefix("ref: ") {
            println!("cargo:rerun-if-changed=.git/{}", branch.trim());
        }
    }
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(commit) if !commit.is_empty() => commit,
        _ => "unknown".into(),
    }
}

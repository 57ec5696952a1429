//! Compiles `proto/medid/v1/*.proto` with protox (pure Rust; no system `protoc`)
//! and writes the encoded descriptor set that server reflection serves.

use std::{env, fs, path::PathBuf};

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
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}

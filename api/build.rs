//! Compiles the etcd v3 API protos (our own copies: same packages, messages
//! and field numbers as etcd) and witan's internal peer protos. protoc comes
//! vendored, so a fresh machine needs no system package to build.
//!
//! It also generates serde impls for the etcd messages (pbjson) with the
//! proto field names, which is the JSON the etcd gateway speaks.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/mvccpb/kv.proto",
        "proto/authpb/auth.proto",
        "proto/etcdserverpb/rpc.proto",
        "proto/witanpb/internal.proto",
        "proto/witanpb/membership.proto",
        "proto/witanpb/raft.proto",
    ];
    let descriptors = std::path::PathBuf::from(std::env::var("OUT_DIR")?).join("descriptors.bin");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .file_descriptor_set_path(&descriptors)
        .compile_with_config(config, &protos, &["proto"])?;
    pbjson_build::Builder::new()
        .register_descriptors(&std::fs::read(&descriptors)?)?
        .preserve_proto_field_names()
        .build(&[".etcdserverpb", ".mvccpb", ".authpb"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}

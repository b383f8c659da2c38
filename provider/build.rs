//! Generates the plugin-protocol server code from proto/ with protox, so building needs no `protoc`, and bakes
//! in the default `fleet.image`: the project's image for this version, pinned by digest in a release build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    default_image();
    let protos = ["proto/tfplugin6.proto", "proto/grpc_controller.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(protos, ["proto"])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}

/// `DTH_DEFAULT_IMAGE` for the crate: `<repository>:<version>[@<digest>]`. `scripts/release` builds the image
/// first and passes its index digest as `DTH_IMAGE_DIGEST`, so a released provider always launches the
/// binaries built with it; `DTH_IMAGE_REPOSITORY` names another home for the image (a fork's registry).
fn default_image() {
    for var in ["DTH_IMAGE_REPOSITORY", "DTH_IMAGE_DIGEST"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let repository = std::env::var("DTH_IMAGE_REPOSITORY")
        .ok()
        .filter(|r| !r.trim().is_empty())
        .unwrap_or_else(|| "public.ecr.aws/dth/dth".into());
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let digest = std::env::var("DTH_IMAGE_DIGEST")
        .ok()
        .map(|d| d.trim().to_owned())
        .filter(|d| !d.is_empty());
    if let Some(d) = &digest {
        let hex = d.strip_prefix("sha256:").unwrap_or("");
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "DTH_IMAGE_DIGEST must be sha256:<64 hex digits>, not {d:?}"
        );
    }
    let image = match digest {
        Some(d) => format!("{repository}:{version}@{d}"),
        None => format!("{repository}:{version}"),
    };
    println!("cargo:rustc-env=DTH_DEFAULT_IMAGE={image}");
}

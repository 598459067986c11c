//! Compiles the card processor's wire contract, `proto/card_processor.proto`,
//! into its messages, client and server: protox parses it (pure Rust, so no
//! `protoc` is needed) and tonic's code generator writes the Rust.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/card_processor.proto");
    let descriptors = protox::compile(["card_processor.proto"], ["proto"])?;
    tonic_prost_build::configure()
        // Its `Debug` (in `processor.rs`) shows the card's last four
        // digits only.
        .skip_debug(["palisade.processor.v1.ChargeRequest"])
        .build_transport(false)
        .compile_fds(descriptors)?;
    Ok(())
}

//! Gives this package's doctests a run path to libtorch.
//!
//! Binaries get an `$ORIGIN`-relative run path from `.cargo/config.toml`, but rustdoc
//! links doctests into temporary folders without those flags, where `$ORIGIN` means
//! nothing. Link arguments from a build script do reach doctests, so add the absolute
//! path of the libtorch this checkout builds against (LIBTORCH, set by the same config).

fn main() {
    println!("cargo::rerun-if-env-changed=LIBTORCH");
    if let Ok(libtorch) = std::env::var("LIBTORCH") {
        println!("cargo::rustc-link-arg=-Wl,-rpath,{libtorch}/lib");
    }
}

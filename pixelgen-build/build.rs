// Records how pixelgen-build itself is optimised, so that a game's build script can say
// when generation runs unoptimised (the default for build-dependencies).
fn main() {
    let level = std::env::var("OPT_LEVEL").unwrap_or_default();
    println!("cargo:rustc-env=PIXELGEN_BUILD_OPT_LEVEL={level}");
    println!("cargo:rerun-if-env-changed=OPT_LEVEL");
}

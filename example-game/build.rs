fn main() {
    pixelgen_build::Build::new().run_or_exit();
}

//! Link the shim with `-z now`: every PLT slot is bound at load time, so neither a signal handler nor the
//! restorer ever enters the dynamic linker's lazy binding (which takes locks and writes the GOT).
fn main() {
    println!("cargo:rustc-cdylib-link-arg=-Wl,-z,now");
    println!("cargo:rerun-if-changed=build.rs");
}

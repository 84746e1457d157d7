//! Exports `pthread_key_create` from the `pedestal` binary so module libraries bind to the
//! base's definition (see `src/tls_keys.rs`). A custom base binary needs the same link argument.

fn main() {
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=pthread_key_create,--export-dynamic-symbol=pthread_key_delete"
    );
}

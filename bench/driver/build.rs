//! `bench-base` is a custom base: export `pthread_key_create` like `pedestal` does (see
//! `pedestal-base`'s `src/tls_keys.rs`).

fn main() {
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=pthread_key_create,--export-dynamic-symbol=pthread_key_delete"
    );
}

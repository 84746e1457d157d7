//! A custom base exports `pthread_key_create` like `pedestal` does, so module loads do not use up
//! the process's pthread keys (see `pedestal-base`'s `src/tls_keys.rs`).

fn main() {
    println!(
        "cargo:rustc-link-arg-bins=-Wl,--export-dynamic-symbol=pthread_key_create,--export-dynamic-symbol=pthread_key_delete"
    );
}

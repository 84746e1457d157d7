//! `pedestal keygen [--out PATH]` and `pedestal sign --key KEY FILE...`.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use pedestal_base::signing::{SecretKey, sign_file, write_key_pair};

#[derive(clap::Args)]
pub struct KeygenArgs {
    /// Where to write the secret key (mode 0600); the public key goes to PATH.pub. Existing
    /// files are never overwritten.
    #[arg(long, value_name = "PATH", default_value = "pedestal.key")]
    out: PathBuf,
}

#[derive(clap::Args)]
pub struct SignArgs {
    /// The secret key file (`pedestal keygen`).
    #[arg(long, value_name = "KEY")]
    key: PathBuf,
    /// The module files to sign; each gets FILE.sig beside it.
    #[arg(required = true, value_name = "FILE")]
    files: Vec<PathBuf>,
}

pub fn keygen(args: KeygenArgs) -> anyhow::Result<ExitCode> {
    let key = SecretKey::generate()?;
    let public = write_key_pair(&args.out, &key)?;
    println!("key id {}", key.id());
    println!("secret key: {} (keep it private)", args.out.display());
    println!("public key: {} (list it in the base's --trusted-keys file)", public.display());
    Ok(ExitCode::SUCCESS)
}

pub fn sign(args: SignArgs) -> anyhow::Result<ExitCode> {
    let key = SecretKey::load(&args.key).context("reading the secret key")?;
    for file in &args.files {
        let signed = sign_file(&key, file)?;
        println!(
            "signed {} (sha256 {}) with key {}: {}",
            file.display(),
            hex::encode(signed.sha256),
            key.id(),
            signed.path.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

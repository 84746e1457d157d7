//! A structural check of an uploaded file before it is ever handed to `dlopen`.
//!
//! `dlopen` maps a library's segments straight from the file; a truncated file makes the
//! process die of `SIGBUS` when a page past its end is touched. So the base reads the ELF
//! header and every program and section header first, and refuses anything that is not a
//! complete shared object for this machine.

/// Why a file is not a loadable shared object, as a sentence; `Ok` when it is.
pub fn check_shared_object(bytes: &[u8]) -> Result<(), String> {
    const EHDR_LEN: usize = 64;
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        let start = String::from_utf8_lossy(&bytes[..bytes.len().min(16)]).into_owned();
        let hint = if start.starts_with("#!") { " (it looks like a script)" } else { "" };
        return Err(format!("the file does not start with the ELF magic bytes{hint}"));
    }
    if bytes.len() < EHDR_LEN {
        return Err(format!("the ELF header is truncated ({} bytes)", bytes.len()));
    }
    if bytes[4] != 2 {
        return Err("not a 64-bit ELF file".into());
    }
    if bytes[5] != 1 {
        return Err("not a little-endian ELF file".into());
    }
    let e_type = u16_at(bytes, 16);
    if e_type != 3 {
        let kind = match e_type {
            1 => "a relocatable object (.o)",
            2 => "an executable",
            4 => "a core dump",
            _ => "an unknown ELF type",
        };
        return Err(format!("the ELF file is {kind}, not a shared object"));
    }
    const EM_X86_64: u16 = 62;
    const EM_AARCH64: u16 = 183;
    let expected = if cfg!(target_arch = "aarch64") { EM_AARCH64 } else { EM_X86_64 };
    let machine = u16_at(bytes, 18);
    if machine != expected {
        return Err(format!("built for ELF machine {machine}, this base runs on {expected}"));
    }

    let phoff = u64_at(bytes, 32);
    let shoff = u64_at(bytes, 40);
    let phentsize = u64::from(u16_at(bytes, 54));
    let phnum = u64::from(u16_at(bytes, 56));
    let shentsize = u64::from(u16_at(bytes, 58));
    let shnum = u64::from(u16_at(bytes, 60));
    let len = bytes.len() as u64;

    let table_end = |off: u64, entsize: u64, num: u64| off.checked_add(entsize.checked_mul(num)?);
    match table_end(phoff, phentsize, phnum) {
        Some(end) if end <= len && phentsize >= 56 && phnum > 0 => {}
        _ => {
            return Err(format!(
                "the program headers lie beyond the end of the file ({len} bytes): truncated"
            ));
        }
    }
    match table_end(shoff, shentsize, shnum) {
        Some(end) if end <= len => {}
        _ => {
            return Err(format!(
                "the section headers lie beyond the end of the file ({len} bytes): truncated"
            ));
        }
    }
    for i in 0..phnum {
        let ph = (phoff + i * phentsize) as usize;
        const PT_LOAD: u32 = 1;
        if u32_at(bytes, ph) != PT_LOAD {
            continue;
        }
        let offset = u64_at(bytes, ph + 8);
        let filesz = u64_at(bytes, ph + 32);
        match offset.checked_add(filesz) {
            Some(end) if end <= len => {}
            _ => {
                return Err(format!(
                    "a loadable segment ends at byte {} but the file has {len} bytes: truncated",
                    offset.saturating_add(filesz)
                ));
            }
        }
    }
    Ok(())
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::check_shared_object;

    fn check(bytes: &[u8], expected: &str) {
        let got = check_shared_object(bytes).err().unwrap_or_else(|| "ok".into());
        assert!(got.contains(expected), "expected {expected:?}, got {got:?}");
    }

    #[test]
    fn refuses_what_is_not_a_shared_object() {
        check(b"", "ELF magic");
        check(b"#!/bin/sh\necho hi\n", "looks like a script");
        check(b"\x7fELF\x02\x01", "header is truncated");
        let this_exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // Test binaries are position-independent executables, which ELF calls ET_DYN too,
        // so they pass the structural check; cut one short and it must not.
        check(&this_exe[..this_exe.len() / 2], "truncated");
        check(&this_exe, "ok");
    }
}

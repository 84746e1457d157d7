//! What the base decides from a module file's bytes alone, before it is ever handed to `dlopen`.
//!
//! Two checks, both on untrusted input and bounds-checked at every read:
//!
//! - **Structure.** `dlopen` maps a library's segments straight from the file; a truncated file
//!   makes the process die of `SIGBUS` when a page past its end is touched. So the ELF header and
//!   every program and section header are read first, and anything that is not a complete 64-bit
//!   little-endian shared object for this machine is refused.
//! - **Interface stamp.** `dlopen` runs a library's ELF constructors before the base could ask it
//!   anything, so a library that is not a Pedestal module must be told apart *without* loading
//!   it. The dynamic symbol table must export a defined `pedestal_interface_stamp` object, and its
//!   bytes (plain data, no relocations) are read from the file: the magic must be right, and the
//!   caller compares the major version.
//!
//! The symbol is looked up the way the dynamic loader will look it up: through `PT_DYNAMIC`
//! (`DT_SYMTAB`, `DT_STRTAB`, `DT_STRSZ`) and its hash table (`DT_GNU_HASH`, else `DT_HASH`),
//! with addresses mapped to file offsets through the `PT_LOAD` segments. Section headers are
//! deliberately not used for the lookup: the loader never reads them (they may be stripped, or
//! say something else than what `dlsym` will find), so a stamp only section headers show would
//! pass here and fail after the constructors ran.

use std::{borrow::Cow, fs::File, os::unix::fs::FileExt, path::Path};

/// The interface version a module file's stamp claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StampVersion {
    /// Major interface version.
    pub major: u32,
    /// Minor interface version.
    pub minor: u32,
    /// Patch interface version.
    pub patch: u32,
}

impl std::fmt::Display for StampVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// Bytes to check: a buffer in memory or a file read piecewise (a stored artifact, without
/// reading all of it).
pub trait Source {
    /// Total length in bytes.
    fn size(&self) -> u64;
    /// `len` bytes at `offset`, or `None` when they are not all inside the source.
    fn bytes_at(&self, offset: u64, len: usize) -> Option<Cow<'_, [u8]>>;
}

impl Source for [u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn bytes_at(&self, offset: u64, len: usize) -> Option<Cow<'_, [u8]>> {
        let start = usize::try_from(offset).ok()?;
        self.get(start..start.checked_add(len)?).map(Cow::Borrowed)
    }
}

/// A file read with positioned reads (`pread`), its length taken once when opened.
pub struct FileSource {
    file: File,
    size: u64,
}

impl FileSource {
    /// Opens `path` for checking.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = File::open(path)?;
        let size = file.metadata()?.len();
        Ok(Self { file, size })
    }
}

impl Source for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn bytes_at(&self, offset: u64, len: usize) -> Option<Cow<'_, [u8]>> {
        if offset.checked_add(len as u64)? > self.size {
            return None;
        }
        let mut buffer = vec![0; len];
        self.file.read_exact_at(&mut buffer, offset).ok()?;
        Some(Cow::Owned(buffer))
    }
}

/// Checks that `src` is a complete shared object exporting a Pedestal interface stamp, and
/// returns the version the stamp claims; `Err` says, as a sentence, why it is not a module.
pub fn check_module(src: &(impl Source + ?Sized)) -> Result<StampVersion, String> {
    Elf::parse(src)?.interface_stamp()
}

/// The symbol every module exports (`InterfaceStamp::SYMBOL`, NUL included).
const STAMP_SYMBOL: &[u8] = pedestal_module_api::abi::InterfaceStamp::SYMBOL;
const STAMP_MAGIC: [u8; 8] = pedestal_module_api::abi::InterfaceStamp::MAGIC;
/// `size_of::<InterfaceStamp>()`: 8 magic bytes and three `u32`s.
const STAMP_LEN: usize = 20;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const DT_NULL: u64 = 0;
const DT_HASH: u64 = 4;
const DT_STRTAB: u64 = 5;
const DT_SYMTAB: u64 = 6;
const DT_STRSZ: u64 = 10;
const DT_SYMENT: u64 = 11;
const DT_GNU_HASH: u64 = 0x6fff_fef5;
const SYM_LEN: u64 = 24;
/// The most program headers a file may have (linkers write about ten).
const MAX_PROGRAM_HEADERS: u64 = 256;
const STT_OBJECT: u8 = 1;
const STB_GLOBAL: u8 = 1;
const STB_WEAK: u8 = 2;
const STV_DEFAULT: u8 = 0;
const STV_PROTECTED: u8 = 3;

/// One program header, the fields the checks use.
#[derive(Debug, Clone, Copy)]
struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

/// A structurally checked ELF file.
struct Elf<'a, S: Source + ?Sized> {
    src: &'a S,
    segments: Vec<Segment>,
}

/// What `PT_DYNAMIC` says about the dynamic symbols.
#[derive(Debug, Default)]
struct Dynamic {
    symtab: Option<u64>,
    strtab: Option<u64>,
    strsz: Option<u64>,
    syment: Option<u64>,
    gnu_hash: Option<u64>,
    hash: Option<u64>,
}

impl<'a, S: Source + ?Sized> Elf<'a, S> {
    fn parse(src: &'a S) -> Result<Self, String> {
        const EHDR_LEN: usize = 64;
        let len = src.size();
        let Some(head) = src.bytes_at(0, EHDR_LEN.min(len as usize)) else {
            return Err("the file cannot be read".into());
        };
        if head.len() < 4 || &head[..4] != b"\x7fELF" {
            let start = String::from_utf8_lossy(&head[..head.len().min(16)]).into_owned();
            let hint = if start.starts_with("#!") { " (it looks like a script)" } else { "" };
            return Err(format!("the file does not start with the ELF magic bytes{hint}"));
        }
        if head.len() < EHDR_LEN {
            return Err(format!("the ELF header is truncated ({len} bytes)"));
        }
        let h = &head[..];
        if h[4] != 2 {
            return Err("not a 64-bit ELF file".into());
        }
        if h[5] != 1 {
            return Err("not a little-endian ELF file".into());
        }
        let e_type = le16(h, 16);
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
        let machine = le16(h, 18);
        if machine != expected {
            return Err(format!("built for ELF machine {machine}, this base runs on {expected}"));
        }

        let phoff = le64(h, 32);
        let shoff = le64(h, 40);
        let phentsize = u64::from(le16(h, 54));
        let phnum = u64::from(le16(h, 56));
        let shentsize = u64::from(le16(h, 58));
        let shnum = u64::from(le16(h, 60));

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
        // A linker writes about ten program headers; every address lookup walks them, so a file
        // with thousands (a hostile one: zero-sized segments) would make each lookup slow.
        if phnum > MAX_PROGRAM_HEADERS {
            return Err(format!(
                "the file has {phnum} program headers, more than the {MAX_PROGRAM_HEADERS} a shared \
                 library has"
            ));
        }
        let mut segments = Vec::with_capacity(phnum as usize);
        for i in 0..phnum {
            // In bounds: the whole table was checked above.
            let ph = src.bytes_at(phoff + i * phentsize, 56).ok_or("the program headers cannot be read")?;
            let segment = Segment {
                kind: le32(&ph, 0),
                offset: le64(&ph, 8),
                vaddr: le64(&ph, 16),
                filesz: le64(&ph, 32),
            };
            if segment.kind == PT_LOAD || segment.kind == PT_DYNAMIC {
                match segment.offset.checked_add(segment.filesz) {
                    Some(end) if end <= len => {}
                    _ => {
                        return Err(format!(
                            "a loadable segment ends at byte {} but the file has {len} bytes: truncated",
                            segment.offset.saturating_add(segment.filesz)
                        ));
                    }
                }
            }
            segments.push(segment);
        }
        Ok(Self { src, segments })
    }

    /// Finds, checks and reads the exported interface stamp.
    fn interface_stamp(&self) -> Result<StampVersion, String> {
        let missing = "the shared library does not export `pedestal_interface_stamp`: it was not \
                       built with pedestal_module_api::export_module!";
        let dynamic = self.dynamic()?;
        let (Some(symtab), Some(strtab), Some(strsz)) = (dynamic.symtab, dynamic.strtab, dynamic.strsz)
        else {
            return Err(format!("{missing} (it has no dynamic symbol table)"));
        };
        if dynamic.syment.is_some_and(|size| size != SYM_LEN) {
            return Err("the dynamic symbol table has entries of an unexpected size".into());
        }
        let table = SymbolTable { elf: self, symtab, strtab, strsz };
        let hash = gnu_hash(&STAMP_SYMBOL[..STAMP_SYMBOL.len() - 1]);
        let found = match (dynamic.gnu_hash, dynamic.hash) {
            (Some(at), _) => table.find_gnu(at, hash)?,
            (None, Some(at)) => table.find_sysv(at)?,
            (None, None) => return Err(format!("{missing} (it has no symbol hash table)")),
        };
        let symbol = found.ok_or(missing)?;
        let (info, other) = (symbol[4], symbol[5]);
        let (shndx, value, size) = (le16(&symbol, 6), le64(&symbol, 8), le64(&symbol, 16));
        if shndx == 0 {
            return Err(format!("{missing} (it only refers to it, undefined)"));
        }
        if info & 0xf != STT_OBJECT {
            return Err("`pedestal_interface_stamp` is not a data object".into());
        }
        if !matches!(info >> 4, STB_GLOBAL | STB_WEAK) || !matches!(other & 3, STV_DEFAULT | STV_PROTECTED) {
            return Err(format!("{missing} (it is not exported)"));
        }
        if size < STAMP_LEN as u64 {
            return Err(format!("the interface stamp is {size} bytes, smaller than a stamp"));
        }
        let stamp = self.at_address(value, STAMP_LEN).ok_or(
            "the interface stamp's bytes are not in the file (its address is outside every segment)",
        )?;
        if stamp[..8] != STAMP_MAGIC {
            return Err("the interface stamp has the wrong magic bytes".into());
        }
        Ok(StampVersion { major: le32(&stamp, 8), minor: le32(&stamp, 12), patch: le32(&stamp, 16) })
    }

    /// The entries of `PT_DYNAMIC` the symbol lookup needs.
    fn dynamic(&self) -> Result<Dynamic, String> {
        let segment =
            self.segments.iter().find(|s| s.kind == PT_DYNAMIC).ok_or(
                "the file has no dynamic section (PT_DYNAMIC): not a shared library a module can be",
            )?;
        let mut dynamic = Dynamic::default();
        // Bounded by the segment's size, itself inside the file.
        for i in 0..segment.filesz / 16 {
            let entry =
                self.src.bytes_at(segment.offset + i * 16, 16).ok_or("the dynamic section is truncated")?;
            let (tag, value) = (le64(&entry, 0), le64(&entry, 8));
            let slot = match tag {
                DT_NULL => break,
                DT_SYMTAB => &mut dynamic.symtab,
                DT_STRTAB => &mut dynamic.strtab,
                DT_STRSZ => &mut dynamic.strsz,
                DT_SYMENT => &mut dynamic.syment,
                DT_GNU_HASH => &mut dynamic.gnu_hash,
                DT_HASH => &mut dynamic.hash,
                _ => continue,
            };
            slot.get_or_insert(value);
        }
        Ok(dynamic)
    }

    /// `len` bytes at virtual address `vaddr`, read from the file-backed part of the `PT_LOAD`
    /// segment that holds all of them.
    fn at_address(&self, vaddr: u64, len: usize) -> Option<Cow<'a, [u8]>> {
        let end = vaddr.checked_add(len as u64)?;
        let segment = self.segments.iter().find(|s| {
            s.kind == PT_LOAD && s.vaddr <= vaddr && s.vaddr.checked_add(s.filesz).is_some_and(|e| end <= e)
        })?;
        self.src.bytes_at(segment.offset.checked_add(vaddr - segment.vaddr)?, len)
    }

    fn u32_at(&self, vaddr: u64) -> Option<u32> {
        self.at_address(vaddr, 4).map(|b| le32(&b, 0))
    }
}

/// The dynamic symbol and string tables, by virtual address.
struct SymbolTable<'e, 'a, S: Source + ?Sized> {
    elf: &'e Elf<'a, S>,
    symtab: u64,
    strtab: u64,
    strsz: u64,
}

impl<S: Source + ?Sized> SymbolTable<'_, '_, S> {
    /// Symbol `index`'s entry if it is named `pedestal_interface_stamp`.
    fn stamp_entry(&self, index: u64) -> Result<Option<Vec<u8>>, String> {
        let at = index.checked_mul(SYM_LEN).and_then(|off| self.symtab.checked_add(off));
        let entry = at.and_then(|at| self.elf.at_address(at, SYM_LEN as usize));
        let entry = entry.ok_or("the dynamic symbol table lies outside the file")?;
        let name = u64::from(le32(&entry, 0));
        if name.checked_add(STAMP_SYMBOL.len() as u64).is_none_or(|end| end > self.strsz) {
            return Ok(None);
        }
        let Some(text) =
            self.strtab.checked_add(name).and_then(|at| self.elf.at_address(at, STAMP_SYMBOL.len()))
        else {
            return Err("the dynamic string table lies outside the file".into());
        };
        Ok((*text == *STAMP_SYMBOL).then(|| entry.into_owned()))
    }

    /// A lookup through `DT_GNU_HASH` at `at`, as glibc does it (bloom filter, bucket, chain).
    fn find_gnu(&self, at: u64, hash: u32) -> Result<Option<Vec<u8>>, String> {
        let broken = || "the GNU hash table is truncated or malformed".to_owned();
        let word =
            |i: u64| i.checked_mul(4).and_then(|off| at.checked_add(off)).and_then(|a| self.elf.u32_at(a));
        let (nbuckets, symoffset, bloom_size, bloom_shift) = (
            word(0).ok_or_else(broken)?,
            word(1).ok_or_else(broken)?,
            word(2).ok_or_else(broken)?,
            word(3).ok_or_else(broken)?,
        );
        if nbuckets == 0 || bloom_size == 0 {
            return Ok(None);
        }
        let bloom = at + 16;
        let index = u64::from(hash / 64) & (u64::from(bloom_size) - 1);
        let filter = bloom
            .checked_add(index * 8)
            .and_then(|a| self.elf.at_address(a, 8))
            .map(|b| le64(&b, 0))
            .ok_or_else(broken)?;
        let bits = (1u64 << (hash % 64)) | (1u64 << ((hash >> (bloom_shift % 32)) % 64));
        if filter & bits != bits {
            return Ok(None);
        }
        let buckets = bloom.checked_add(u64::from(bloom_size) * 8).ok_or_else(broken)?;
        let chains = buckets.checked_add(u64::from(nbuckets) * 4).ok_or_else(broken)?;
        let bucket = |i: u64| buckets.checked_add(i * 4).and_then(|a| self.elf.u32_at(a));
        let first = u64::from(bucket(u64::from(hash % nbuckets)).ok_or_else(broken)?);
        if first < u64::from(symoffset) {
            return Ok(None);
        }
        // Each step is another symbol, and each symbol has a 24-byte entry in the file: a walk
        // longer than the file has symbols is malformed (a chain that never sets its last bit).
        let steps = self.elf.src.size() / SYM_LEN + 1;
        for symbol in (first..).take(steps as usize) {
            let chain = (symbol - u64::from(symoffset))
                .checked_mul(4)
                .and_then(|off| chains.checked_add(off))
                .and_then(|a| self.elf.u32_at(a))
                .ok_or_else(broken)?;
            if chain | 1 == hash | 1
                && let Some(entry) = self.stamp_entry(symbol)?
            {
                return Ok(Some(entry));
            }
            if chain & 1 == 1 {
                return Ok(None);
            }
        }
        Err(broken())
    }

    /// A lookup through the System V `DT_HASH` table at `at`.
    fn find_sysv(&self, at: u64) -> Result<Option<Vec<u8>>, String> {
        let broken = || "the ELF hash table is truncated or malformed".to_owned();
        let word =
            |i: u64| i.checked_mul(4).and_then(|off| at.checked_add(off)).and_then(|a| self.elf.u32_at(a));
        let (nbucket, nchain) = (word(0).ok_or_else(broken)?, word(1).ok_or_else(broken)?);
        if nbucket == 0 {
            return Ok(None);
        }
        // `nchain` is the number of symbols: each has a chain word and a 24-byte entry in the file,
        // so a count the file cannot hold is malformed (and would make the walk below endless).
        if u64::from(nchain) > self.elf.src.size() / SYM_LEN + 1
            || word(2 + u64::from(nbucket) + u64::from(nchain).saturating_sub(1)).is_none()
        {
            return Err(broken());
        }
        let hash = sysv_hash(&STAMP_SYMBOL[..STAMP_SYMBOL.len() - 1]);
        let mut symbol = word(2 + u64::from(hash % nbucket)).ok_or_else(broken)?;
        // A chain visits each symbol at most once; more steps than symbols is a cycle.
        for _ in 0..=nchain {
            if symbol == 0 {
                return Ok(None);
            }
            if symbol >= nchain {
                return Err(broken());
            }
            if let Some(entry) = self.stamp_entry(u64::from(symbol))? {
                return Ok(Some(entry));
            }
            symbol = word(2 + u64::from(nbucket) + u64::from(symbol)).ok_or_else(broken)?;
        }
        Err(broken())
    }
}

/// The GNU symbol hash (`dl_new_hash`).
fn gnu_hash(name: &[u8]) -> u32 {
    name.iter().fold(5381u32, |h, &c| h.wrapping_mul(33).wrapping_add(u32::from(c)))
}

/// The System V ELF symbol hash.
fn sysv_hash(name: &[u8]) -> u32 {
    name.iter().fold(0u32, |h, &c| {
        let h = (h << 4).wrapping_add(u32::from(c));
        let g = h & 0xf000_0000;
        (h ^ (g >> 24)) & !g
    })
}

// Callers pass slices at least `at + N` long (read with exactly that length).
fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &[u8], expected: &str) {
        let got = Elf::parse(bytes).err().unwrap_or_else(|| "ok".into());
        assert!(got.contains(expected), "expected {expected:?}, got {got:?}");
    }

    /// `check_module`'s answer as text: the version, or the reason.
    fn module(bytes: &[u8]) -> String {
        match check_module(bytes) {
            Ok(version) => version.to_string(),
            Err(reason) => reason,
        }
    }

    fn check_module_says(bytes: &[u8], expected: &str) {
        let got = module(bytes);
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
        // And they export no interface stamp.
        check_module_says(&this_exe, "does not export `pedestal_interface_stamp`");
    }

    /// Which hash table a synthetic library carries.
    #[derive(Clone, Copy)]
    enum Hash {
        Gnu,
        SysV,
        None,
    }

    /// A synthetic library, laid out with file offsets equal to virtual addresses (one `PT_LOAD`
    /// over the whole file): header, two program headers, the dynamic section, `.dynsym` (the
    /// null symbol and `name`), `.dynstr`, the hash table and the stamp's bytes.
    struct Library {
        name: &'static [u8],
        stamp: [u8; 20],
        hash: Hash,
        info: u8,
        shndx: u16,
    }

    impl Library {
        fn module(major: u32) -> Self {
            let mut stamp = [0; 20];
            stamp[..8].copy_from_slice(b"PEDESTAL");
            stamp[8..12].copy_from_slice(&major.to_le_bytes());
            stamp[12..16].copy_from_slice(&3u32.to_le_bytes());
            stamp[16..20].copy_from_slice(&1u32.to_le_bytes());
            Self { name: b"pedestal_interface_stamp", stamp, hash: Hash::Gnu, info: 0x11, shndx: 7 }
        }

        fn bytes(&self) -> Vec<u8> {
            const DYNAMIC: u64 = 64 + 2 * 56;
            const DYN_ENTRIES: u64 = 6;
            let symtab = DYNAMIC + DYN_ENTRIES * 16;
            let strtab = symtab + 2 * SYM_LEN;
            let mut strings = vec![0u8];
            strings.extend_from_slice(self.name);
            strings.push(0);
            let hash_at = strtab + strings.len() as u64;
            let name_hash = gnu_hash(self.name);
            let mut table = Vec::new();
            let (hash_tag, words): (u64, Vec<u32>) = match self.hash {
                Hash::Gnu => {
                    // One bucket, symbols from 1, one bloom word with shift 6.
                    let bits = (1u64 << (name_hash % 64)) | (1u64 << ((name_hash >> 6) % 64));
                    let mut w = vec![1, 1, 1, 6];
                    w.extend([bits as u32, (bits >> 32) as u32]);
                    w.extend([1, name_hash | 1]);
                    (DT_GNU_HASH, w)
                }
                Hash::SysV => (DT_HASH, vec![1, 2, 1, 0, 0]),
                Hash::None => (0x7000_0000, Vec::new()),
            };
            for w in words {
                table.extend_from_slice(&w.to_le_bytes());
            }
            let stamp_at = hash_at + table.len() as u64;
            let total = stamp_at + 20;

            let mut out = Vec::new();
            let machine: u16 = if cfg!(target_arch = "aarch64") { 183 } else { 62 };
            out.extend_from_slice(b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0");
            out.extend_from_slice(&3u16.to_le_bytes());
            out.extend_from_slice(&machine.to_le_bytes());
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&0u64.to_le_bytes()); // entry
            out.extend_from_slice(&64u64.to_le_bytes()); // phoff
            out.extend_from_slice(&0u64.to_le_bytes()); // shoff: stripped
            out.extend_from_slice(&0u32.to_le_bytes()); // flags
            for half in [64u16, 56, 2, 64, 0, 0] {
                out.extend_from_slice(&half.to_le_bytes());
            }
            for (kind, offset, size) in [(PT_LOAD, 0, total), (PT_DYNAMIC, DYNAMIC, DYN_ENTRIES * 16)] {
                out.extend_from_slice(&kind.to_le_bytes());
                out.extend_from_slice(&4u32.to_le_bytes());
                for field in [offset, offset, offset, size, size, 8] {
                    out.extend_from_slice(&field.to_le_bytes());
                }
            }
            let entries = [
                (DT_SYMTAB, symtab),
                (DT_STRTAB, strtab),
                (DT_STRSZ, strings.len() as u64),
                (DT_SYMENT, SYM_LEN),
                (hash_tag, hash_at),
                (DT_NULL, 0),
            ];
            for (tag, value) in entries {
                out.extend_from_slice(&tag.to_le_bytes());
                out.extend_from_slice(&value.to_le_bytes());
            }
            out.extend_from_slice(&[0; SYM_LEN as usize]);
            out.extend_from_slice(&1u32.to_le_bytes());
            out.extend_from_slice(&[self.info, 0]);
            out.extend_from_slice(&self.shndx.to_le_bytes());
            out.extend_from_slice(&stamp_at.to_le_bytes());
            out.extend_from_slice(&20u64.to_le_bytes());
            out.extend_from_slice(&strings);
            out.extend_from_slice(&table);
            out.extend_from_slice(&self.stamp);
            assert_eq!(out.len() as u64, total);
            out
        }
    }

    #[test]
    fn reads_the_stamp_through_either_hash_table_without_section_headers() {
        check_module_says(&Library::module(1).bytes(), "1.3.1");
        check_module_says(&Library { hash: Hash::SysV, ..Library::module(1) }.bytes(), "1.3.1");
        // The major is read, not judged: the caller compares it with its own.
        check_module_says(&Library::module(2).bytes(), "2.3.1");
    }

    #[test]
    fn refuses_a_library_without_a_proper_stamp() {
        let missing = "does not export `pedestal_interface_stamp`";
        check_module_says(
            &Library { name: b"pedestal_interface_stomp", ..Library::module(1) }.bytes(),
            missing,
        );
        check_module_says(
            &Library { hash: Hash::None, ..Library::module(1) }.bytes(),
            "no symbol hash table",
        );
        check_module_says(&Library { shndx: 0, ..Library::module(1) }.bytes(), "undefined");
        check_module_says(&Library { info: 0x12, ..Library::module(1) }.bytes(), "not a data object");
        check_module_says(&Library { info: 0x01, ..Library::module(1) }.bytes(), "not exported");
        let mut wrong_magic = Library::module(1);
        wrong_magic.stamp[0] = b'Q';
        check_module_says(&wrong_magic.bytes(), "wrong magic");
    }

    /// Every prefix of a valid library is refused, and every single-byte corruption of it is
    /// answered (accepted or refused) without a panic or an endless walk.
    #[test]
    fn survives_truncated_and_garbled_tables() {
        for hash in [Hash::Gnu, Hash::SysV] {
            let valid = Library { hash, ..Library::module(1) }.bytes();
            for len in 0..valid.len() {
                assert!(check_module(&valid[..len]).is_err(), "a prefix of {len} bytes passed");
            }
            for at in 0..valid.len() {
                for garble in [0xff, 0x80, 0x01] {
                    let mut bytes = valid.clone();
                    bytes[at] ^= garble;
                    let _ = check_module(&bytes[..]);
                }
            }
        }
    }

    #[test]
    fn a_cycle_in_the_elf_hash_chain_ends() {
        let mut bytes = Library { hash: Hash::SysV, ..Library::module(1) }.bytes();
        // nbucket = 1, nchain = 2, bucket[0] = 1, chain[0] = 0, chain[1] = 1: a loop on itself,
        // with a name that never matches.
        let name_at = bytes.windows(24).position(|w| w == b"pedestal_interface_stamp").unwrap();
        // The hash table follows the name and its NUL.
        let hash_at = name_at + 25;
        assert_eq!(bytes[hash_at..hash_at + 16], [1, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        bytes[hash_at + 16..hash_at + 20].copy_from_slice(&1u32.to_le_bytes());
        bytes[name_at] = b'q';
        check_module_says(&bytes, "malformed");
    }

    #[test]
    fn a_symbol_count_the_file_cannot_hold_is_refused_before_any_walk() {
        let mut bytes = Library { hash: Hash::SysV, ..Library::module(1) }.bytes();
        let name_at = bytes.windows(24).position(|w| w == b"pedestal_interface_stamp").unwrap();
        let hash_at = name_at + 25;
        // nchain = 2^32 - 1 with the same self-loop: four billion steps if it were believed.
        bytes[hash_at + 4..hash_at + 8].copy_from_slice(&u32::MAX.to_le_bytes());
        bytes[hash_at + 16..hash_at + 20].copy_from_slice(&1u32.to_le_bytes());
        bytes[name_at] = b'q';
        check_module_says(&bytes, "malformed");
    }

    #[test]
    fn reads_a_file_piecewise_like_a_buffer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lib.so");
        std::fs::write(&path, Library::module(1).bytes()).unwrap();
        let file = FileSource::open(&path).unwrap();
        assert_eq!(check_module(&file).map(|v| v.to_string()), Ok("1.3.1".into()));
    }
}

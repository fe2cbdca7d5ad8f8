//! Just enough ELF64 reading to tell whether the running executable defines a symbol in
//! its static symbol table (to explain why a self callback was not found: "defined but
//! not exported") and to read a file's GNU build-id (the identity of the executable and
//! libraries a criu image needs), and which file this code was loaded from.

fn u16_at(b: &[u8], o: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], o: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], o: usize) -> Option<usize> {
    usize::try_from(u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?)).ok()
}

/// Whether `/proc/self/exe` has `name` in its `.symtab` (little-endian ELF64 only).
pub fn exe_defines_symbol(name: &str) -> bool {
    std::fs::read("/proc/self/exe")
        .ok()
        .and_then(|image| symtab_defines(&image, name))
        .unwrap_or(false)
}

/// The file this code was loaded from: the shared library, or the executable it is
/// linked into.
pub(crate) fn loaded_from() -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    // SAFETY: dladdr on one of our own functions; dli_fname is NUL-terminated.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(loaded_from as *const () as *const libc::c_void, &mut info) == 0
            || info.dli_fname.is_null()
        {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(info.dli_fname).to_bytes();
        Some(std::ffi::OsStr::from_bytes(name).into())
    }
}

const SHT_SYMTAB: u32 = 2;
const PT_NOTE: u32 = 4;
const NT_GNU_BUILD_ID: u32 = 3;

/// The GNU build-id of an ELF64 file, as hex, from its PT_NOTE segments.
pub fn build_id(path: &std::path::Path) -> Option<String> {
    use std::io::Read;
    // The program headers and notes sit near the start of the file.
    let mut head = vec![0u8; 64 * 1024];
    let n = std::fs::File::open(path).ok()?.read(&mut head).ok()?;
    head.truncate(n);
    build_id_in(&head)
}

fn build_id_in(image: &[u8]) -> Option<String> {
    if image.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = u64_at(image, 0x20)?;
    let phentsize = usize::from(u16_at(image, 0x36)?);
    let phnum = usize::from(u16_at(image, 0x38)?);
    for i in 0..phnum {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(image, ph)? != PT_NOTE {
            continue;
        }
        let (offset, size) = (u64_at(image, ph + 0x08)?, u64_at(image, ph + 0x20)?);
        let mut note = offset;
        let end = offset.checked_add(size)?;
        while note + 12 <= end {
            let (namesz, descsz, kind) = (
                u32_at(image, note)? as usize,
                u32_at(image, note + 4)? as usize,
                u32_at(image, note + 8)?,
            );
            let name_at = note + 12;
            let desc_at = name_at + namesz.div_ceil(4) * 4;
            if kind == NT_GNU_BUILD_ID && image.get(name_at..name_at + namesz)? == b"GNU\0" {
                let desc = image.get(desc_at..desc_at + descsz)?;
                return Some(desc.iter().map(|b| format!("{b:02x}")).collect());
            }
            note = desc_at + descsz.div_ceil(4) * 4;
        }
    }
    None
}

fn symtab_defines(image: &[u8], name: &str) -> Option<bool> {
    if image.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let shoff = u64_at(image, 0x28)?;
    let shentsize = usize::from(u16_at(image, 0x3a)?);
    let shnum = usize::from(u16_at(image, 0x3c)?);
    let section = |i: usize| shoff.checked_add(i.checked_mul(shentsize)?);
    for i in 0..shnum {
        let sh = section(i)?;
        if u32_at(image, sh + 4)? != SHT_SYMTAB {
            continue;
        }
        let (sym_off, sym_size) = (u64_at(image, sh + 0x18)?, u64_at(image, sh + 0x20)?);
        let strtab = section(u32_at(image, sh + 0x28)? as usize)?;
        let (str_off, str_size) = (u64_at(image, strtab + 0x18)?, u64_at(image, strtab + 0x20)?);
        let strings = image.get(str_off..str_off.checked_add(str_size)?)?;
        let symbols = image.get(sym_off..sym_off.checked_add(sym_size)?)?;
        return Some(symbols.chunks_exact(24).any(|sym| {
            let at = u32_at(sym, 0).unwrap_or(0) as usize;
            let shndx = u16_at(sym, 6).unwrap_or(0);
            shndx != 0
                && strings.get(at..).and_then(|s| s.split(|&c| c == 0).next())
                    == Some(name.as_bytes())
        }));
    }
    Some(false)
}

#[cfg(test)]
mod tests {
    #[test]
    fn finds_a_symbol_of_the_test_binary_and_not_a_made_up_one() {
        // Test binaries keep their symbol table; `main` is always defined.
        assert!(super::exe_defines_symbol("main"));
        assert!(!super::exe_defines_symbol("no_such_symbol_opalcrs_xyz"));
    }

    #[test]
    fn libc_has_a_build_id() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.contains("libc.so"))
            .unwrap();
        let id = super::build_id(std::path::Path::new(libc)).expect("Debian's libc has a build-id");
        assert!(id.len() >= 32 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");
        assert_eq!(super::build_id(std::path::Path::new("/proc/self/status")), None);
    }

    #[test]
    fn garbage_is_not_elf() {
        assert_eq!(super::symtab_defines(b"not an elf file at all", "main"), None);
        assert_eq!(super::symtab_defines(b"\x7fELF\x02\x01\0\0", "main"), None);
    }
}

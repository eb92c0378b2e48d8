//! Checks of an ELF header before the dynamic loader sees the file: that it is a shared
//! library for this machine and that every segment and the section header table lie inside
//! the file, so a copy taken while the file was still being written is rejected instead of
//! mapped (touching a mapped page past the end of a file raises SIGBUS).

/// Machine number of the host in `e_machine`, from the ELF specification's table.
#[cfg(target_arch = "x86_64")]
const HOST_MACHINE: u16 = 62;
#[cfg(target_arch = "aarch64")]
const HOST_MACHINE: u16 = 183;
#[cfg(target_arch = "riscv64")]
const HOST_MACHINE: u16 = 243;
/// Unknown here: the machine check is skipped and the dynamic loader has the last word.
#[cfg(not(any(
    target_arch = "x86_64",
    target_arch = "aarch64",
    target_arch = "riscv64"
)))]
const HOST_MACHINE: u16 = 0;

const ELF_MAGIC: &[u8; 4] = b"\x7fELF";
/// `EI_CLASS` of 64-bit objects.
const CLASS_64: u8 = 2;
/// `EI_DATA` of little-endian objects.
const DATA_LITTLE_ENDIAN: u8 = 1;
/// `e_type` of shared objects.
const TYPE_SHARED: u16 = 3;
/// `p_type` of loadable segments.
const SEGMENT_LOAD: u32 = 1;
/// Size of the 64-bit ELF header.
const HEADER_LEN: usize = 64;

/// Checks that `bytes` is a complete 64-bit little-endian shared library for this machine.
/// Returns what is wrong otherwise.
pub fn check(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < HEADER_LEN || &bytes[..4] != ELF_MAGIC {
        return Err("the file is not a shared library (no ELF header)".to_owned());
    }
    if bytes[4] != CLASS_64 || bytes[5] != DATA_LITTLE_ENDIAN {
        return Err(
            "the library is built for another architecture (not 64-bit little-endian ELF)"
                .to_owned(),
        );
    }
    let file_type = u16_at(bytes, 16);
    if file_type != TYPE_SHARED {
        return Err(format!(
            "the file is an ELF object of type {file_type}, not a shared library; build the \
             plugin with crate-type = [\"cdylib\"] or cc -shared"
        ));
    }
    let machine = u16_at(bytes, 18);
    if HOST_MACHINE != 0 && machine != HOST_MACHINE {
        return Err(format!(
            "the library is built for another architecture (ELF machine {machine}, this \
             host is {HOST_MACHINE}); rebuild it for {}",
            std::env::consts::ARCH
        ));
    }
    check_extents(bytes)
}

/// Checks that the program headers, each loadable segment and the section header table
/// end inside the file.
fn check_extents(bytes: &[u8]) -> Result<(), String> {
    let len = bytes.len() as u64;
    let truncated = || {
        "the library file is truncated, perhaps still being written; it is loaded again \
         when it changes"
            .to_owned()
    };
    let program_offset = u64_at(bytes, 32);
    let section_offset = u64_at(bytes, 40);
    let program_entry = u64::from(u16_at(bytes, 54));
    let program_count = u64::from(u16_at(bytes, 56));
    let section_entry = u64::from(u16_at(bytes, 58));
    let section_count = u64::from(u16_at(bytes, 60));
    let end_of = |offset: u64, size: u64| offset.checked_add(size).filter(|end| *end <= len);
    let sections_size = section_entry.saturating_mul(section_count);
    end_of(section_offset, sections_size).ok_or_else(truncated)?;
    let programs_size = program_entry.saturating_mul(program_count);
    end_of(program_offset, programs_size).ok_or_else(truncated)?;
    if program_entry < 56 && program_count > 0 {
        return Err("the library's program headers are malformed".to_owned());
    }
    for index in 0..program_count {
        // Fits in usize: it ends inside `bytes`, checked above.
        let header = (program_offset + index * program_entry) as usize;
        if u32_at(bytes, header) != SEGMENT_LOAD {
            continue;
        }
        let offset = u64_at(bytes, header + 8);
        let file_size = u64_at(bytes, header + 32);
        end_of(offset, file_size).ok_or_else(truncated)?;
    }
    Ok(())
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own_executable() -> Vec<u8> {
        std::fs::read(std::env::current_exe().unwrap()).unwrap()
    }

    #[test]
    fn text_file_is_not_a_library() {
        let error =
            check(b"not a library at all, just text that is long enough to read").unwrap_err();
        assert!(error.contains("not a shared library"), "{error}");
    }

    #[test]
    fn foreign_machine_is_rejected() {
        let mut bytes = own_executable();
        // The test binary is a position-independent executable, ELF type 3 like a library.
        bytes[16..18].copy_from_slice(&TYPE_SHARED.to_le_bytes());
        bytes[18..20].copy_from_slice(&(HOST_MACHINE + 1).to_le_bytes());
        let error = check(&bytes).unwrap_err();
        assert!(error.contains("another architecture"), "{error}");
    }

    #[test]
    fn truncated_copy_is_rejected() {
        let mut bytes = own_executable();
        bytes[16..18].copy_from_slice(&TYPE_SHARED.to_le_bytes());
        assert_eq!(check(&bytes), Ok(()));
        bytes.truncate(bytes.len() / 2);
        let error = check(&bytes).unwrap_err();
        assert!(error.contains("truncated"), "{error}");
    }
}

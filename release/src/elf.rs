//! Just enough of the ELF header to refuse a binary built for the wrong machine, or one that needs a dynamic
//! loader the image does not have. Shipping amd64 binaries in the arm64 image would only show up on a t4g
//! instance, as `exec format error`.

/// `e_machine` of x86_64.
pub const EM_X86_64: u16 = 62;
/// `e_machine` of aarch64.
pub const EM_AARCH64: u16 = 183;

const PT_INTERP: u32 = 3;

/// What the header says about a binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Elf {
    pub machine: u16,
    /// It names a program interpreter (PT_INTERP): it is dynamically linked.
    pub interpreter: bool,
}

/// The usual name of an `e_machine` value.
pub fn machine_name(machine: u16) -> String {
    match machine {
        3 => "x86 (i386)".into(),
        40 => "arm (32-bit)".into(),
        EM_X86_64 => "x86_64".into(),
        EM_AARCH64 => "aarch64".into(),
        243 => "riscv".into(),
        other => format!("machine {other}"),
    }
}

/// Reads the ELF header and program headers of a 64-bit little-endian binary.
pub fn inspect(bytes: &[u8]) -> Result<Elf, String> {
    if bytes.len() < 4 || &bytes[..4] != b"\x7fELF" {
        return Err("not an ELF binary".into());
    }
    if bytes.len() < 64 {
        return Err("truncated ELF header".into());
    }
    if bytes[4] != 2 {
        return Err("a 32-bit ELF binary (the image needs 64-bit)".into());
    }
    if bytes[5] != 1 {
        return Err("a big-endian ELF binary (the image needs little-endian)".into());
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]);
    let machine = u16_at(18);
    let phoff = u64::from_le_bytes(bytes[32..40].try_into().expect("8 bytes"));
    let phentsize = usize::from(u16_at(54));
    let phnum = usize::from(u16_at(56));
    let mut interpreter = false;
    if phnum > 0 {
        if phentsize < 4 {
            return Err(format!("bad program header size {phentsize}"));
        }
        let start =
            usize::try_from(phoff).map_err(|_| "program headers out of range".to_string())?;
        let end = phentsize
            .checked_mul(phnum)
            .and_then(|n| n.checked_add(start))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| "program headers past the end of the file".to_string())?;
        interpreter = bytes[start..end]
            .chunks_exact(phentsize)
            .any(|ph| u32::from_le_bytes(ph[..4].try_into().expect("4 bytes")) == PT_INTERP);
    }
    Ok(Elf {
        machine,
        interpreter,
    })
}

/// Ok when `bytes` is a static 64-bit little-endian ELF for `want` (an `e_machine` value); the error says
/// what it is instead.
pub fn check(bytes: &[u8], want: u16) -> Result<(), String> {
    let elf = inspect(bytes)?;
    if elf.machine != want {
        return Err(format!(
            "an {} ELF binary (e_machine {}), but this platform needs {} (e_machine {})",
            machine_name(elf.machine),
            elf.machine,
            machine_name(want),
            want
        ));
    }
    if elf.interpreter {
        return Err(format!(
            "a dynamically linked {} binary (it names a program interpreter), but the image has no libc or \
             loader: build it static (scripts/build-binaries, *-linux-musl)",
            machine_name(elf.machine)
        ));
    }
    Ok(())
}

/// A minimal 64-bit little-endian ELF file: header plus `program_types` program headers (tests only).
#[cfg(test)]
pub fn fake(machine: u16, program_types: &[u32]) -> Vec<u8> {
    let mut b = vec![0u8; 64];
    b[..4].copy_from_slice(b"\x7fELF");
    b[4] = 2; // ELFCLASS64
    b[5] = 1; // ELFDATA2LSB
    b[6] = 1; // EV_CURRENT
    b[16..18].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    b[18..20].copy_from_slice(&machine.to_le_bytes());
    b[32..40].copy_from_slice(&64u64.to_le_bytes()); // e_phoff
    b[52..54].copy_from_slice(&64u16.to_le_bytes()); // e_ehsize
    b[54..56].copy_from_slice(&56u16.to_le_bytes()); // e_phentsize
    b[56..58].copy_from_slice(&(program_types.len() as u16).to_le_bytes());
    for &t in program_types {
        let mut ph = vec![0u8; 56];
        ph[..4].copy_from_slice(&t.to_le_bytes());
        b.extend(ph);
    }
    b.extend(b"payload");
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    const PT_LOAD: u32 = 1;

    #[test]
    fn reads_the_machine() {
        assert_eq!(inspect(&fake(EM_X86_64, &[PT_LOAD])).unwrap().machine, 62);
        assert_eq!(inspect(&fake(EM_AARCH64, &[PT_LOAD])).unwrap().machine, 183);
    }

    #[test]
    fn accepts_a_static_binary_of_the_right_machine() {
        check(&fake(EM_AARCH64, &[PT_LOAD, PT_LOAD]), EM_AARCH64).unwrap();
        check(&fake(EM_X86_64, &[]), EM_X86_64).unwrap();
    }

    #[test]
    fn refuses_the_wrong_machine_naming_both() {
        let err = check(&fake(EM_X86_64, &[PT_LOAD]), EM_AARCH64).unwrap_err();
        assert!(
            err.contains("x86_64") && err.contains("e_machine 62"),
            "{err}"
        );
        assert!(
            err.contains("aarch64") && err.contains("e_machine 183"),
            "{err}"
        );
        let err = check(&fake(EM_AARCH64, &[PT_LOAD]), EM_X86_64).unwrap_err();
        assert!(err.starts_with("an aarch64 ELF binary"), "{err}");
    }

    #[test]
    fn refuses_a_dynamically_linked_binary() {
        let err = check(&fake(EM_X86_64, &[6, PT_INTERP, PT_LOAD]), EM_X86_64).unwrap_err();
        assert!(err.contains("dynamically linked"), "{err}");
    }

    #[test]
    fn refuses_what_is_not_a_64_bit_little_endian_elf() {
        assert_eq!(
            check(b"#!/bin/sh\necho hi\n", EM_X86_64).unwrap_err(),
            "not an ELF binary"
        );
        assert_eq!(check(b"", EM_X86_64).unwrap_err(), "not an ELF binary");
        assert_eq!(
            check(b"\x7fELF\x02\x01", EM_X86_64).unwrap_err(),
            "truncated ELF header"
        );
        let mut b = fake(EM_X86_64, &[]);
        b[4] = 1;
        assert!(check(&b, EM_X86_64).unwrap_err().contains("32-bit"));
        let mut b = fake(EM_X86_64, &[]);
        b[5] = 2;
        assert!(check(&b, EM_X86_64).unwrap_err().contains("big-endian"));
        let mut b = fake(EM_X86_64, &[PT_LOAD]);
        b.truncate(80);
        assert!(check(&b, EM_X86_64).unwrap_err().contains("past the end"));
    }
}

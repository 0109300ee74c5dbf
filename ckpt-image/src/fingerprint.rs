//! The node and C-library fingerprint an image is restored against.

use crate::Fingerprint;

/// CPUID feature words (see [`Fingerprint::cpu_features`]); empty off x86_64.
pub fn cpu_features() -> Vec<u32> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid_count;
        #[allow(unused_unsafe)]
        // SAFETY: CPUID is available on every x86_64 CPU; leaves above the maximum return zeros.
        unsafe {
            let max = __cpuid_count(0, 0).eax;
            let l1 = __cpuid_count(1, 0);
            let l7 = if max >= 7 { __cpuid_count(7, 0) } else { std::mem::zeroed() };
            let ld = if max >= 0xd { __cpuid_count(0xd, 0) } else { std::mem::zeroed() };
            // Leaf 1 EBX/ECX bits that change per call or per CPU (APIC id, OSXSAVE is stable) are not used.
            vec![l1.ecx, l1.edx, l7.ebx, l7.ecx, l7.edx, ld.eax]
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}

/// Why a restart on this node would not work: the first difference between `saved` and `now`.
pub fn fingerprint_mismatch(saved: &Fingerprint, now: &Fingerprint) -> Option<String> {
    if saved.machine != now.machine {
        return Some(format!("the image is for {}, this node is {}", saved.machine, now.machine));
    }
    if saved.kernel_release != now.kernel_release {
        return Some(format!(
            "the image was taken under kernel {}, this node runs {}",
            saved.kernel_release, now.kernel_release
        ));
    }
    if saved.libc_version != now.libc_version {
        return Some(format!(
            "the image was taken with glibc {}, this node has {}",
            saved.libc_version, now.libc_version
        ));
    }
    if saved.page_size != now.page_size {
        return Some(format!("page size {} at checkpoint, {} here", saved.page_size, now.page_size));
    }
    for (i, (&s, &n)) in saved.cpu_features.iter().zip(now.cpu_features.iter()).enumerate() {
        if s & !n != 0 {
            return Some(format!(
                "this CPU lacks features the program may use (CPUID word {i}: missing bits {:#x})",
                s & !n
            ));
        }
    }
    if saved.cpu_features.len() > now.cpu_features.len() {
        return Some("this CPU reports fewer feature words".into());
    }
    None
}

/// This node's fingerprint (kernel, C library, CPU features, page size).
pub fn fingerprint() -> Fingerprint {
    // SAFETY: uname fills a zeroed utsname.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is writable.
    unsafe { libc::uname(&mut u) };
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    let libc_version = libc_version();
    // SAFETY: sysconf has no preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(0) as u64;
    Fingerprint {
        kernel_release: field(&u.release),
        machine: field(&u.machine),
        libc_version,
        cpu_features: cpu_features(),
        page_size,
    }
}

/// The C library's version: the shim and its images are glibc-only (the restorer replaces the whole address
/// space, and an image restored under another C library would run its saved glibc against the new one).
#[cfg(target_env = "gnu")]
fn libc_version() -> String {
    unsafe extern "C" {
        fn gnu_get_libc_version() -> *const std::ffi::c_char;
    }
    // SAFETY: returns a static NUL-terminated string.
    unsafe { std::ffi::CStr::from_ptr(gnu_get_libc_version()) }.to_string_lossy().into_owned()
}

/// Other C libraries have no version call; images are not written there (the shim is glibc-only), and the
/// empty string never matches a glibc image's fingerprint.
#[cfg(not(target_env = "gnu"))]
fn libc_version() -> String {
    String::new()
}

//! Copying a section into the application's memory while its checksum is computed: one pass over the
//! source instead of two (a verification, then a copy).
//!
//! The source is read in chunks small enough to stay in the core's L2 cache: the CRC of a chunk brings it
//! in from memory, and the copy then reads it from the cache and writes the destination with
//! non-temporal (streaming) stores, which neither read the destination's lines first nor evict the
//! source. A plain copy of such a chunk (the C library uses streaming stores only for copies of several
//! MiB) reads every destination line before writing it: on the benchmark machine that made chunked
//! copies 2-3x slower than one copy of the whole section (BENCHMARKS.md, scenario 2).

/// Bytes checksummed then copied at a time: well inside the L2 cache (64 KiB to 1 MiB measured alike,
/// 64 KiB slightly ahead: BENCHMARKS.md, scenario 2), large enough that the per-chunk cost is nothing.
pub(crate) const CHUNK: usize = 64 << 10;

/// Copies `src` into `dst` (of the same length) chunk by chunk, updating `crc` with each chunk of `src`
/// before it is copied.
///
/// # Panics
///
/// When the lengths differ (the callers check them first).
pub(crate) fn checksum_and_copy(crc: &mut crc32fast::Hasher, src: &[u8], dst: &mut [u8]) {
    assert_eq!(src.len(), dst.len(), "checksum_and_copy of slices of different lengths");
    for (s, d) in src.chunks(CHUNK).zip(dst.chunks_mut(CHUNK)) {
        crc.update(s);
        copy_streaming(s, d);
    }
    store_fence();
}

#[cfg(target_arch = "x86_64")]
fn copy_streaming(src: &[u8], dst: &mut [u8]) {
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is available (checked just above); the slices have the same length (the caller's
        // zip of equal chunks).
        unsafe { copy_streaming_avx2(src, dst) }
    } else {
        dst.copy_from_slice(src);
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn copy_streaming(src: &[u8], dst: &mut [u8]) {
    dst.copy_from_slice(src);
}

/// `dst.copy_from_slice(src)` with 32-byte streaming stores for the part of `dst` that is 32-byte aligned.
///
/// # Safety
///
/// The CPU must support AVX2, and `src.len() == dst.len()`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn copy_streaming_avx2(src: &[u8], dst: &mut [u8]) {
    use std::arch::x86_64::{__m256i, _mm256_loadu_si256, _mm256_stream_si256};
    const LANE: usize = 32;
    debug_assert_eq!(src.len(), dst.len());
    // The unaligned head and the tail are copied plainly; the body streams 4 lanes per iteration.
    let head = dst.as_ptr().align_offset(LANE).min(dst.len());
    dst[..head].copy_from_slice(&src[..head]);
    let body = (dst.len() - head) / (4 * LANE) * (4 * LANE);
    let (s, d) = (&src[head..head + body], &mut dst[head..head + body]);
    let mut k = 0;
    while k < body {
        // SAFETY: `k + 4 * LANE <= body`, so every load reads inside `s` and every store writes inside `d`;
        // `d`'s start is 32-byte aligned (`head` above) and `k` a multiple of 32, so each store address is
        // aligned as `_mm256_stream_si256` requires; loads may be unaligned (`loadu`).
        unsafe {
            let sp = s.as_ptr().add(k).cast::<__m256i>();
            let dp = d.as_mut_ptr().add(k).cast::<__m256i>();
            let a = _mm256_loadu_si256(sp);
            let b = _mm256_loadu_si256(sp.add(1));
            let c = _mm256_loadu_si256(sp.add(2));
            let e = _mm256_loadu_si256(sp.add(3));
            _mm256_stream_si256(dp, a);
            _mm256_stream_si256(dp.add(1), b);
            _mm256_stream_si256(dp.add(2), c);
            _mm256_stream_si256(dp.add(3), e);
        }
        k += 4 * LANE;
    }
    dst[head + body..].copy_from_slice(&src[head + body..]);
}

/// Orders the streaming stores before everything after (they are weakly ordered otherwise).
fn store_fence() {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `sfence` has no preconditions (SSE, part of the x86_64 baseline).
    unsafe {
        std::arch::x86_64::_mm_sfence();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_every_length_and_alignment_and_checksums_the_source() {
        let src: Vec<u8> = (0..(CHUNK * 2 + 777)).map(|i| (i * 31 + i / 251) as u8).collect();
        for len in [0, 1, 31, 32, 33, 127, 128, 129, 4096, CHUNK - 1, CHUNK, CHUNK + 1, src.len() - 64] {
            for (so, doff) in [(0, 0), (1, 0), (0, 1), (3, 17), (31, 5)] {
                let s = &src[so..so + len];
                let mut buf = vec![0u8; len + 64];
                let d = &mut buf[doff..doff + len];
                let mut h = crc32fast::Hasher::new();
                checksum_and_copy(&mut h, s, d);
                assert!(d == s, "len {len} offsets {so}/{doff}");
                assert_eq!(h.finalize(), crc32fast::hash(s), "len {len}");
                assert!(buf[..doff].iter().all(|&b| b == 0) && buf[doff + len..].iter().all(|&b| b == 0));
            }
        }
    }
}

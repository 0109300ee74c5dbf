//! The byte-shuffle filter (FORMAT.md, "Shuffle"): element bytes regrouped into planes before
//! compression, which pays for arrays of floats whose high bytes repeat.

use super::SHUFFLE_BLOCK;

/// Byte-shuffles `src` into `dst` (same length): within each element-aligned block, byte `j` of element `i`
/// goes to `j * n + i`; the bytes after the last whole element are copied unchanged.
///
/// The output is part of the file format (FORMAT.md), so every path below yields exactly the bytes of that
/// definition (tested against the plain loop). Speed comes from transposing tiles of elements in 64-bit (or
/// 32-bit) words, so that each output stripe receives whole words: 8 elements of 8 or 16 bytes, 4 elements of 4
/// bytes, 8 elements of 2 bytes. Other element sizes take a loop over tiles of 16 elements, stripe by stripe.
/// Portable safe Rust; the elements after the last whole tile are moved one byte at a time.
///
/// # Panics
///
/// When `src` and `dst` differ in length, or `element_size` is 0.
pub fn shuffle_block(src: &[u8], dst: &mut [u8], element_size: usize) {
    assert_eq!(src.len(), dst.len(), "shuffle_block: src and dst lengths differ");
    let n = src.len() / element_size;
    let (src_body, src_tail) = src.split_at(n * element_size);
    let (dst_body, dst_tail) = dst.split_at_mut(n * element_size);
    match element_size {
        1 => dst_body.copy_from_slice(src_body),
        2 => shuffle_2(src_body, dst_body, n),
        4 => shuffle_4(src_body, dst_body, n),
        8 => shuffle_x8::<1>(src_body, dst_body, n),
        16 => shuffle_x8::<2>(src_body, dst_body, n),
        es => shuffle_generic(src_body, dst_body, n, es),
    }
    dst_tail.copy_from_slice(src_tail);
}

/// Inverse of [`shuffle_block`].
///
/// # Panics
///
/// As [`shuffle_block`].
pub fn unshuffle_block(src: &[u8], dst: &mut [u8], element_size: usize) {
    assert_eq!(src.len(), dst.len(), "unshuffle_block: src and dst lengths differ");
    let n = src.len() / element_size;
    let (src_body, src_tail) = src.split_at(n * element_size);
    let (dst_body, dst_tail) = dst.split_at_mut(n * element_size);
    match element_size {
        1 => dst_body.copy_from_slice(src_body),
        2 => unshuffle_2(src_body, dst_body, n),
        4 => unshuffle_4(src_body, dst_body, n),
        8 => unshuffle_x8::<1>(src_body, dst_body, n),
        16 => unshuffle_x8::<2>(src_body, dst_body, n),
        es => unshuffle_generic(src_body, dst_body, n, es),
    }
    dst_tail.copy_from_slice(src_tail);
}

/// Transposes an 8×8 byte matrix held as 8 little-endian rows: byte `i` of output word `j` is byte `j` of
/// input word `i`. Three rounds of masked swaps (1-, 2-, then 4-byte blocks); the transpose is its own inverse.
#[inline(always)]
fn transpose_8x8(r: [u64; 8]) -> [u64; 8] {
    #[inline(always)]
    fn swap(r: &mut [u64; 8], a: usize, b: usize, shift: u32, mask: u64) {
        let t = ((r[a] >> shift) ^ r[b]) & mask;
        r[a] ^= t << shift;
        r[b] ^= t;
    }
    let mut r = r;
    let m1 = 0x00ff_00ff_00ff_00ff;
    swap(&mut r, 0, 1, 8, m1);
    swap(&mut r, 2, 3, 8, m1);
    swap(&mut r, 4, 5, 8, m1);
    swap(&mut r, 6, 7, 8, m1);
    let m2 = 0x0000_ffff_0000_ffff;
    swap(&mut r, 0, 2, 16, m2);
    swap(&mut r, 1, 3, 16, m2);
    swap(&mut r, 4, 6, 16, m2);
    swap(&mut r, 5, 7, 16, m2);
    let m4 = 0x0000_0000_ffff_ffff;
    swap(&mut r, 0, 4, 32, m4);
    swap(&mut r, 1, 5, 32, m4);
    swap(&mut r, 2, 6, 32, m4);
    swap(&mut r, 3, 7, 32, m4);
    r
}

/// The 4×4 counterpart of [`transpose_8x8`] on 32-bit rows.
#[inline(always)]
fn transpose_4x4(mut r: [u32; 4]) -> [u32; 4] {
    for (k, shift, mask) in [(1, 8, 0x00ff_00ff_u32), (2, 16, 0x0000_ffff)] {
        for a in 0..4 {
            if a & k == 0 {
                let t = ((r[a] >> shift) ^ r[a + k]) & mask;
                r[a] ^= t << shift;
                r[a + k] ^= t;
            }
        }
    }
    r
}

#[inline(always)]
fn load_u64(b: &[u8]) -> u64 {
    u64::from_le_bytes(b[..8].try_into().expect("8 bytes"))
}

#[inline(always)]
fn load_u32(b: &[u8]) -> u32 {
    u32::from_le_bytes(b[..4].try_into().expect("4 bytes"))
}

/// Elements of `8 * C` bytes: per tile of 8 elements, one 8×8 transpose per 8-byte column.
fn shuffle_x8<const C: usize>(src: &[u8], dst: &mut [u8], n: usize) {
    let es = 8 * C;
    let tiles = n / 8;
    for (t, tile) in src.chunks_exact(8 * es).enumerate() {
        for c in 0..C {
            let rows = core::array::from_fn(|i| load_u64(&tile[i * es + c * 8..]));
            for (j, word) in transpose_8x8(rows).into_iter().enumerate() {
                dst[(c * 8 + j) * n + t * 8..][..8].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    shuffle_scalar(src, dst, n, es, tiles * 8);
}

fn unshuffle_x8<const C: usize>(src: &[u8], dst: &mut [u8], n: usize) {
    let es = 8 * C;
    let tiles = n / 8;
    for (t, tile) in dst.chunks_exact_mut(8 * es).enumerate() {
        for c in 0..C {
            let rows = core::array::from_fn(|j| load_u64(&src[(c * 8 + j) * n + t * 8..]));
            for (i, word) in transpose_8x8(rows).into_iter().enumerate() {
                tile[i * es + c * 8..][..8].copy_from_slice(&word.to_le_bytes());
            }
        }
    }
    unshuffle_scalar(src, dst, n, es, tiles * 8);
}

/// 4-byte elements: tiles of 4 elements, a 4×4 transpose each.
fn shuffle_4(src: &[u8], dst: &mut [u8], n: usize) {
    for (t, tile) in src.chunks_exact(16).enumerate() {
        let rows = core::array::from_fn(|i| load_u32(&tile[i * 4..]));
        for (j, word) in transpose_4x4(rows).into_iter().enumerate() {
            dst[j * n + t * 4..][..4].copy_from_slice(&word.to_le_bytes());
        }
    }
    shuffle_scalar(src, dst, n, 4, n / 4 * 4);
}

fn unshuffle_4(src: &[u8], dst: &mut [u8], n: usize) {
    for (t, tile) in dst.chunks_exact_mut(16).enumerate() {
        let rows = core::array::from_fn(|j| load_u32(&src[j * n + t * 4..]));
        for (i, word) in transpose_4x4(rows).into_iter().enumerate() {
            tile[i * 4..][..4].copy_from_slice(&word.to_le_bytes());
        }
    }
    unshuffle_scalar(src, dst, n, 4, n / 4 * 4);
}

/// Gathers the even bytes of `x` into the low 32 bits.
#[inline(always)]
fn even_bytes(x: u64) -> u64 {
    let x = x & 0x00ff_00ff_00ff_00ff;
    let x = (x | (x >> 8)) & 0x0000_ffff_0000_ffff;
    (x | (x >> 16)) & 0xffff_ffff
}

/// Inverse of [`even_bytes`]: spreads the low 32 bits of `x` over the even bytes.
#[inline(always)]
fn spread_bytes(x: u64) -> u64 {
    let x = x & 0xffff_ffff;
    let x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    (x | (x << 8)) & 0x00ff_00ff_00ff_00ff
}

/// 2-byte elements: tiles of 8 elements (two words) split into their even and odd bytes.
fn shuffle_2(src: &[u8], dst: &mut [u8], n: usize) {
    for (t, tile) in src.chunks_exact(16).enumerate() {
        let (a, b) = (load_u64(tile), load_u64(&tile[8..]));
        let lo = even_bytes(a) | even_bytes(b) << 32;
        let hi = even_bytes(a >> 8) | even_bytes(b >> 8) << 32;
        dst[t * 8..][..8].copy_from_slice(&lo.to_le_bytes());
        dst[n + t * 8..][..8].copy_from_slice(&hi.to_le_bytes());
    }
    shuffle_scalar(src, dst, n, 2, n / 8 * 8);
}

fn unshuffle_2(src: &[u8], dst: &mut [u8], n: usize) {
    for (t, tile) in dst.chunks_exact_mut(16).enumerate() {
        let (lo, hi) = (load_u64(&src[t * 8..]), load_u64(&src[n + t * 8..]));
        let a = spread_bytes(lo) | spread_bytes(hi) << 8;
        let b = spread_bytes(lo >> 32) | spread_bytes(hi >> 32) << 8;
        tile[..8].copy_from_slice(&a.to_le_bytes());
        tile[8..].copy_from_slice(&b.to_le_bytes());
    }
    unshuffle_scalar(src, dst, n, 2, n / 8 * 8);
}

/// Other element sizes: tiles of 16 elements, written stripe by stripe.
fn shuffle_generic(src: &[u8], dst: &mut [u8], n: usize, es: usize) {
    for (t, tile) in src.chunks_exact(16 * es).enumerate() {
        for j in 0..es {
            let out: &mut [u8; 16] = (&mut dst[j * n + t * 16..][..16]).try_into().expect("16 bytes");
            for (i, b) in out.iter_mut().enumerate() {
                *b = tile[i * es + j];
            }
        }
    }
    shuffle_scalar(src, dst, n, es, n / 16 * 16);
}

fn unshuffle_generic(src: &[u8], dst: &mut [u8], n: usize, es: usize) {
    for (t, tile) in dst.chunks_exact_mut(16 * es).enumerate() {
        for j in 0..es {
            let inp: &[u8; 16] = src[j * n + t * 16..][..16].try_into().expect("16 bytes");
            for (i, &b) in inp.iter().enumerate() {
                tile[i * es + j] = b;
            }
        }
    }
    unshuffle_scalar(src, dst, n, es, n / 16 * 16);
}

/// Shuffles the elements `from..n` one byte at a time (the tail that does not fill a tile).
#[inline(always)]
fn shuffle_scalar(src: &[u8], dst: &mut [u8], n: usize, es: usize, from: usize) {
    for i in from..n {
        for j in 0..es {
            dst[j * n + i] = src[i * es + j];
        }
    }
}

#[inline(always)]
fn unshuffle_scalar(src: &[u8], dst: &mut [u8], n: usize, es: usize, from: usize) {
    for i in from..n {
        for j in 0..es {
            dst[i * es + j] = src[j * n + i];
        }
    }
}

/// The shuffle block length for an element size: [`SHUFFLE_BLOCK`] rounded down to whole elements.
pub fn shuffle_block_len(element_size: usize) -> usize {
    (SHUFFLE_BLOCK / element_size).max(1) * element_size
}

/// The plain byte loop that defines [`shuffle_block`]'s output (FORMAT.md), for the tests that compare the
/// fast paths with it and the benchmark that measures them against it (the `testing` feature).
#[cfg(any(test, feature = "testing"))]
pub fn reference_shuffle(src: &[u8], dst: &mut [u8], element_size: usize) {
    let n = src.len() / element_size;
    for (i, elem) in src[..n * element_size].chunks_exact(element_size).enumerate() {
        for (j, &byte) in elem.iter().enumerate() {
            dst[j * n + i] = byte;
        }
    }
    dst[n * element_size..].copy_from_slice(&src[n * element_size..]);
}

/// The plain byte loop that defines [`unshuffle_block`]'s output, as [`reference_shuffle`].
#[cfg(any(test, feature = "testing"))]
pub fn reference_unshuffle(src: &[u8], dst: &mut [u8], element_size: usize) {
    let n = src.len() / element_size;
    for (i, elem) in dst[..n * element_size].chunks_exact_mut(element_size).enumerate() {
        for (j, byte) in elem.iter_mut().enumerate() {
            *byte = src[j * n + i];
        }
    }
    dst[n * element_size..].copy_from_slice(&src[n * element_size..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_round_trip() {
        for es in [1usize, 2, 4, 8, 3, 16] {
            let src: Vec<u8> = (0..1001u32).map(|i| (i * 7 % 251) as u8).collect();
            let mut mid = vec![0; src.len()];
            let mut back = vec![0; src.len()];
            shuffle_block(&src, &mut mid, es);
            unshuffle_block(&mid, &mut back, es);
            assert_eq!(src, back);
        }
    }

    #[test]
    fn shuffle_matches_reference_loop() {
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let data: Vec<u8> = (0..4200)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 56) as u8
            })
            .collect();
        for es in 1..=17 {
            for len in (0..=2100).chain([4096, 4096 + 5, 4200]) {
                let src = &data[..len];
                let (mut want, mut got) = (vec![0xaa; len], vec![0x55; len]);
                reference_shuffle(src, &mut want, es);
                shuffle_block(src, &mut got, es);
                assert_eq!(want, got, "shuffle, element size {es}, length {len}");
                reference_unshuffle(src, &mut want, es);
                unshuffle_block(src, &mut got, es);
                assert_eq!(want, got, "unshuffle, element size {es}, length {len}");
            }
        }
    }

    #[test]
    fn shuffle_block_of_f64_matches_reference() {
        // A full 1 MiB block of a smooth float64 field, as the writer shuffles it.
        let len = shuffle_block_len(8);
        let src: Vec<u8> = (0..len / 8).flat_map(|i| (i as f64 * 1e-3).sin().to_le_bytes()).collect();
        let (mut want, mut got) = (vec![0; len], vec![0; len]);
        reference_shuffle(&src, &mut want, 8);
        shuffle_block(&src, &mut got, 8);
        assert!(want == got);
        let mut back = vec![0; len];
        unshuffle_block(&got, &mut back, 8);
        assert!(back == src);
    }
}

//! Zero-copy loads of numpy arrays pickled in band (smaller than the out-of-band threshold).
//!
//! A numpy array below 64 KiB travels inside the pickle stream: protocol 5 writes it as a call of
//! `numpy._core.numeric._frombuffer` (`numpy.core.numeric` before numpy 2) whose first argument is a
//! `BYTEARRAY8` holding the array's bytes. The unpickler copies those bytes into a new `bytearray` per
//! array: for 50,000 arrays of 8 KiB, 400 MB of allocations and copies of bytes that are already in
//! private memory (the file read whole with `mmap=False`, or its copy-on-write mapping).
//!
//! [`rewrite`] walks the stream's opcodes once (without the GIL), simulating the unpickler's stack just
//! enough to recognise exactly that pattern: the `_frombuffer` global, a `MARK`, then the `BYTEARRAY8` as
//! the first item after the mark. Each such `BYTEARRAY8` becomes a `NEXT_BUFFER`, and its bytes an
//! out-of-band buffer: a writable view of the private memory where they already are. Every other opcode
//! (a user's own `bytearray`, read-only arrays stored as `bytes`, ...) is kept as it is. The frames are
//! dropped and the rewritten stream (opcodes only: a few bytes per array) is one frame. Anything the walk
//! does not understand (an opcode of an older protocol, a stack that does not add up) leaves the stream
//! untouched: the load is then as before, never wrong.
//!
//! The unpickler (`ckpt._pickling`) maps `_frombuffer` to a function that copies a view whose address is
//! not aligned for its dtype, so restored arrays stay aligned as the `bytearray` copies were.

use std::ops::Range;

/// Where each buffer of the rewritten stream comes from, in `NEXT_BUFFER` order.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// The next of the checkpoint's out-of-band sections.
    Section,
    /// These bytes of the original stream (a former `BYTEARRAY8` payload).
    InStream(Range<usize>),
}

/// A stream with its in-band arrays moved out of band.
#[derive(Debug)]
pub struct Rewritten {
    /// The new pickle stream.
    pub stream: Vec<u8>,
    /// The buffers it consumes, in order.
    pub pieces: Vec<Piece>,
}

/// What the walk knows of a stack or memo item.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Other,
    /// A memo slot never set.
    Unset,
    /// The string `numpy._core.numeric` or `numpy.core.numeric`.
    NumericModule,
    /// The string `_frombuffer`.
    FrombufferName,
    /// The global `numpy._core.numeric._frombuffer`.
    Frombuffer,
}

/// Payloads smaller than this stay in the stream (the view and the call cost more than the copy).
const MIN_PAYLOAD: u64 = 256;

fn string_kind(s: &[u8]) -> Kind {
    match s {
        b"numpy._core.numeric" | b"numpy.core.numeric" => Kind::NumericModule,
        b"_frombuffer" => Kind::FrombufferName,
        _ => Kind::Other,
    }
}

struct Walk<'a> {
    s: &'a [u8],
    i: usize,
    stack: Vec<Kind>,
    marks: Vec<usize>,
    memo: Vec<Kind>,
    /// Entries set in `memo` (the index MEMOIZE uses next, as CPython's unpickler counts them).
    memo_len: usize,
}

impl Walk<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.i.checked_add(n)?;
        let b = self.s.get(self.i..end)?;
        self.i = end;
        Some(b)
    }
    fn uint(&mut self, n: usize) -> Option<u64> {
        let b = self.take(n)?;
        let mut v = [0u8; 8];
        v[..n].copy_from_slice(b);
        Some(u64::from_le_bytes(v))
    }
    fn pop(&mut self) -> Option<Kind> {
        if self.marks.last().is_some_and(|&m| m >= self.stack.len()) {
            return None;
        }
        self.stack.pop()
    }
    fn pop_n(&mut self, n: usize) -> Option<()> {
        for _ in 0..n {
            self.pop()?;
        }
        Some(())
    }
    fn pop_mark(&mut self) -> Option<()> {
        let m = self.marks.pop()?;
        if m > self.stack.len() {
            return None;
        }
        self.stack.truncate(m);
        Some(())
    }
    fn memo_get(&self, idx: u64) -> Option<Kind> {
        let idx = usize::try_from(idx).ok()?;
        self.memo.get(idx).copied().filter(|&k| k != UNSET)
    }
    fn memo_put(&mut self, idx: u64) -> Option<()> {
        let idx = usize::try_from(idx).ok()?;
        let top = *self.stack.last()?;
        if idx >= self.memo.len() {
            if idx > self.memo.len() + (1 << 20) {
                return None;
            }
            self.memo.resize(idx + 1, UNSET);
        }
        if self.memo[idx] == UNSET {
            self.memo_len += 1;
        }
        self.memo[idx] = top;
        Some(())
    }
}

/// A memo slot never set (an index never set would fail the unpickler anyway).
const UNSET: Kind = Kind::Unset;

/// The stream `s` with every numpy array's in-band `BYTEARRAY8` turned into an out-of-band buffer (see the
/// module documentation); `None` when there is none, or the stream is not understood.
pub fn rewrite(s: &[u8]) -> Option<Rewritten> {
    // ckpt pickles with protocol 5 only.
    if s.len() < 2 || s[0] != 0x80 || s[1] != 5 {
        return None;
    }
    let mut w = Walk { s, i: 2, stack: Vec::new(), marks: Vec::new(), memo: Vec::new(), memo_len: 0 };
    // PROTO 5, then FRAME <length>, filled in at the end.
    let mut out = Vec::with_capacity(s.len().min(1 << 20));
    out.extend_from_slice(&s[..2]);
    out.push(0x95);
    out.extend_from_slice(&[0; 8]);
    let mut seg = 2usize;
    let mut pieces = Vec::new();
    let mut moved = 0usize;
    loop {
        let at = w.i;
        let op = *s.get(at)?;
        w.i += 1;
        let push = match op {
            b'(' => {
                w.marks.push(w.stack.len());
                None
            }
            b'.' => {
                out.extend_from_slice(&s[seg..=at]);
                break;
            }
            b'0' => {
                // POP: of the mark itself when nothing was pushed since (as CPython's unpickler does).
                if w.marks.last() == Some(&w.stack.len()) {
                    w.marks.pop();
                } else {
                    w.pop()?;
                }
                None
            }
            b'1' => {
                w.pop_mark()?;
                None
            }
            b'2' => Some(*w.stack.last()?),
            b'N' | 0x88 | 0x89 | b']' | b'}' | b')' | 0x8f => Some(Kind::Other),
            b'a' | b'b' => {
                w.pop()?;
                None
            }
            b's' => {
                w.pop_n(2)?;
                None
            }
            b'e' | b'u' | 0x90 => {
                w.pop_mark()?;
                w.stack.last()?;
                None
            }
            b'd' | b'l' | b't' | 0x91 | b'o' => {
                w.pop_mark()?;
                Some(Kind::Other)
            }
            b'R' | 0x81 | 0x86 => {
                w.pop_n(2)?;
                Some(Kind::Other)
            }
            0x92 | 0x87 => {
                w.pop_n(3)?;
                Some(Kind::Other)
            }
            0x85 | b'Q' | 0x98 => {
                w.pop()?;
                Some(Kind::Other)
            }
            0x93 => {
                let name = w.pop()?;
                let module = w.pop()?;
                Some(if (module, name) == (Kind::NumericModule, Kind::FrombufferName) {
                    Kind::Frombuffer
                } else {
                    Kind::Other
                })
            }
            0x94 => {
                let idx = w.memo_len as u64;
                w.memo_put(idx)?;
                None
            }
            b'q' => {
                let idx = w.uint(1)?;
                w.memo_put(idx)?;
                None
            }
            b'r' => {
                let idx = w.uint(4)?;
                w.memo_put(idx)?;
                None
            }
            b'h' => {
                let idx = w.uint(1)?;
                Some(w.memo_get(idx)?)
            }
            b'j' => {
                let idx = w.uint(4)?;
                Some(w.memo_get(idx)?)
            }
            0x97 => {
                pieces.push(Piece::Section);
                Some(Kind::Other)
            }
            b'K' | 0x82 => {
                w.take(1)?;
                Some(Kind::Other)
            }
            b'M' | 0x83 => {
                w.take(2)?;
                Some(Kind::Other)
            }
            b'J' | 0x84 => {
                w.take(4)?;
                Some(Kind::Other)
            }
            b'G' => {
                w.take(8)?;
                Some(Kind::Other)
            }
            0x8a | b'U' | b'C' => {
                let n = w.uint(1)? as usize;
                w.take(n)?;
                Some(Kind::Other)
            }
            0x8c => {
                let n = w.uint(1)? as usize;
                Some(string_kind(w.take(n)?))
            }
            b'T' | b'B' | 0x8b => {
                let n = w.uint(4)? as usize;
                w.take(n)?;
                Some(Kind::Other)
            }
            b'X' => {
                let n = w.uint(4)? as usize;
                Some(string_kind(w.take(n)?))
            }
            0x8d => {
                let n = usize::try_from(w.uint(8)?).ok()?;
                Some(string_kind(w.take(n)?))
            }
            0x8e => {
                let n = usize::try_from(w.uint(8)?).ok()?;
                w.take(n)?;
                Some(Kind::Other)
            }
            0x95 => {
                w.take(8)?;
                out.extend_from_slice(&s[seg..at]);
                seg = w.i;
                None
            }
            0x96 => {
                let n = w.uint(8)?;
                let start = w.i;
                w.take(usize::try_from(n).ok()?)?;
                let first_after_mark = w.marks.last() == Some(&w.stack.len());
                let callee = w.stack.len().checked_sub(1).map(|k| w.stack[k]);
                if n >= MIN_PAYLOAD && first_after_mark && callee == Some(Kind::Frombuffer) {
                    out.extend_from_slice(&s[seg..at]);
                    out.push(0x97);
                    seg = w.i;
                    pieces.push(Piece::InStream(start..w.i));
                    moved += 1;
                }
                Some(Kind::Other)
            }
            // PROTO again, text opcodes of protocols 0-1 (never written by protocol 5), anything else.
            _ => return None,
        };
        if let Some(k) = push {
            w.stack.push(k);
        }
    }
    if moved == 0 || w.i != s.len() {
        return None;
    }
    let body = (out.len() - 11) as u64;
    out[3..11].copy_from_slice(&body.to_le_bytes());
    Some(Rewritten { stream: out, pieces })
}

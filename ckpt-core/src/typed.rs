//! What typed sections record about their Rust type: the fingerprint of a serde section (encoding
//! [`Encoding::TypedPostcard`]) and the element type and byte order of a slice section
//! ([`Encoding::Slice`]). FORMAT.md, "Typed sections", is the byte-level description.

use std::any::TypeId;

use serde::de::{self, DeserializeOwned, Visitor};

use crate::error::{Error, ErrorKind, Result};
use crate::format::{ElementType, Encoding};

/// Version of the fingerprint that starts a [`Encoding::TypedPostcard`] section.
const FINGERPRINT_VERSION: u8 = 1;
/// The longest type name recorded (longer names are cut at a character boundary).
pub(crate) const MAX_TYPE_NAME: usize = 1024;

/// The Rust type a serde section was written from: its name and, when the type's `Deserialize` tells it,
/// a hash of its shape (the struct's name and field names, an enum's name and variants, a tuple's
/// length, a primitive's kind).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fingerprint {
    /// `std::any::type_name` of the type.
    pub type_name: String,
    /// FNV-1a 64 of the shape; `0`: none recorded.
    pub schema: u64,
}

impl Fingerprint {
    /// The fingerprint of `T` in this build.
    pub fn of<T: DeserializeOwned>() -> Fingerprint {
        let mut type_name = std::any::type_name::<T>().to_string();
        if type_name.len() > MAX_TYPE_NAME {
            let mut cut = MAX_TYPE_NAME;
            while !type_name.is_char_boundary(cut) {
                cut -= 1;
            }
            type_name.truncate(cut);
        }
        Fingerprint { type_name, schema: shape::<T>().map_or(0, |s| fnv1a64(s.as_bytes()).max(1)) }
    }

    /// The bytes that start the section: version, name length, name, schema hash.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(11 + self.type_name.len());
        out.push(FINGERPRINT_VERSION);
        out.extend_from_slice(&(self.type_name.len() as u16).to_le_bytes());
        out.extend_from_slice(self.type_name.as_bytes());
        out.extend_from_slice(&self.schema.to_le_bytes());
        out
    }

    /// Splits a section's bytes into its fingerprint and the postcard bytes that follow.
    pub fn decode(bytes: &[u8]) -> Result<(Fingerprint, &[u8])> {
        let bad = |what: &str| Error::corrupt(format!("the section's type fingerprint is malformed: {what}"));
        let (&version, rest) = bytes.split_first().ok_or_else(|| bad("the section is empty"))?;
        if version != FINGERPRINT_VERSION {
            return Err(Error::new(
                ErrorKind::UnsupportedVersion,
                format!("type fingerprint version {version} (this library reads {FINGERPRINT_VERSION})"),
            ));
        }
        let (len, rest) = rest.split_at_checked(2).ok_or_else(|| bad("no name length"))?;
        let len = usize::from(u16::from_le_bytes([len[0], len[1]]));
        if len > MAX_TYPE_NAME {
            return Err(bad("the type name is longer than 1024 bytes"));
        }
        let (name, rest) = rest.split_at_checked(len).ok_or_else(|| bad("the type name is cut short"))?;
        let type_name = std::str::from_utf8(name).map_err(|_| bad("the type name is not UTF-8"))?.to_string();
        let (schema, rest) = rest.split_at_checked(8).ok_or_else(|| bad("no schema hash"))?;
        let schema = u64::from_le_bytes(schema.try_into().expect("8 bytes"));
        Ok((Fingerprint { type_name, schema }, rest))
    }

    /// Checks that a value written as `self` may be read as `reader`; the error says what differs.
    pub fn check_read_as(&self, reader: &Fingerprint) -> Result<()> {
        let (written, wanted) = (short_type_name(&self.type_name), short_type_name(&reader.type_name));
        let hint = "(Checkpoint::read_serde_unchecked reads it without this check)";
        if written != wanted {
            return Err(Error::new(
                ErrorKind::Encoding,
                format!("the section holds a `{}` value, not `{}` {hint}", self.type_name, reader.type_name),
            ));
        }
        if self.schema != 0 && reader.schema != 0 && self.schema != reader.schema {
            return Err(Error::new(
                ErrorKind::Encoding,
                format!(
                    "the section holds a `{}` value whose shape (fields, variants) differs from this build's \
                     `{}`: schema {:#018x} in the file, {:#018x} here {hint}",
                    self.type_name, reader.type_name, self.schema, reader.schema
                ),
            ));
        }
        Ok(())
    }
}

/// FNV-1a 64 (the hash the run identity uses for command lines).
pub(crate) fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// A type name without module paths (`app::sim::State<alloc::vec::Vec<f64>>` → `State<Vec<f64>>`): what
/// reads compare, so moving a type to another module (or a compiler that spells a path differently) does
/// not make its checkpoints unreadable.
pub(crate) fn short_type_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut segment = String::new();
    let mut chars = name.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ':' && chars.peek() == Some(&':') {
            chars.next();
            segment.clear();
        } else if c.is_alphanumeric() || c == '_' {
            segment.push(c);
        } else {
            out.push_str(&segment);
            segment.clear();
            out.push(c);
        }
    }
    out.push_str(&segment);
    out
}

/// The shape `T`'s `Deserialize` asks for first (its name and fields, variants, length or primitive
/// kind), or `None` when it asks for nothing a format can describe (`deserialize_any`).
pub(crate) fn shape<T: DeserializeOwned>() -> Option<String> {
    let mut seen = None;
    let _ = T::deserialize(Probe { seen: &mut seen });
    seen
}

/// A deserializer that records the first request and fails it (nothing is decoded).
struct Probe<'a> {
    seen: &'a mut Option<String>,
}

#[derive(Debug)]
struct Stop;

impl std::fmt::Display for Stop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("shape probe")
    }
}

impl std::error::Error for Stop {}

impl de::Error for Stop {
    fn custom<M: std::fmt::Display>(_: M) -> Stop {
        Stop
    }
}

macro_rules! probe_primitive {
    ($($method:ident => $name:literal),* $(,)?) => {
        $(fn $method<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Stop> {
            self.record($name.to_string())
        })*
    };
}

impl Probe<'_> {
    fn record<V>(self, shape: String) -> std::result::Result<V, Stop> {
        *self.seen = Some(shape);
        Err(Stop)
    }
}

impl<'de> de::Deserializer<'de> for Probe<'_> {
    type Error = Stop;

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Stop> {
        Err(Stop)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> std::result::Result<V::Value, Stop> {
        Err(Stop)
    }

    probe_primitive! {
        deserialize_bool => "bool", deserialize_i8 => "i8", deserialize_i16 => "i16", deserialize_i32 => "i32",
        deserialize_i64 => "i64", deserialize_i128 => "i128", deserialize_u8 => "u8", deserialize_u16 => "u16",
        deserialize_u32 => "u32", deserialize_u64 => "u64", deserialize_u128 => "u128", deserialize_f32 => "f32",
        deserialize_f64 => "f64", deserialize_char => "char", deserialize_str => "string",
        deserialize_string => "string", deserialize_bytes => "bytes", deserialize_byte_buf => "bytes",
        deserialize_option => "option", deserialize_unit => "unit", deserialize_seq => "seq",
        deserialize_map => "map",
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, name: &'static str, _: V) -> std::result::Result<V::Value, Stop> {
        self.record(format!("unit struct {name}"))
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        _: V,
    ) -> std::result::Result<V::Value, Stop> {
        self.record(format!("newtype struct {name}"))
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, _: V) -> std::result::Result<V::Value, Stop> {
        self.record(format!("tuple {len}"))
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        len: usize,
        _: V,
    ) -> std::result::Result<V::Value, Stop> {
        self.record(format!("tuple struct {name} {len}"))
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> std::result::Result<V::Value, Stop> {
        self.record(format!("struct {name} {{{}}}", fields.join(",")))
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        _: V,
    ) -> std::result::Result<V::Value, Stop> {
        self.record(format!("enum {name} {{{}}}", variants.join(",")))
    }

    fn is_human_readable(&self) -> bool {
        false
    }
}

/// The element type of `T` when it is a primitive number (`None`: another `Pod` type).
pub(crate) fn element_type_of<T: 'static>() -> Option<ElementType> {
    let id = TypeId::of::<T>();
    let table = [
        (TypeId::of::<u8>(), ElementType::U8),
        (TypeId::of::<i8>(), ElementType::I8),
        (TypeId::of::<u16>(), ElementType::U16),
        (TypeId::of::<i16>(), ElementType::I16),
        (TypeId::of::<u32>(), ElementType::U32),
        (TypeId::of::<i32>(), ElementType::I32),
        (TypeId::of::<u64>(), ElementType::U64),
        (TypeId::of::<i64>(), ElementType::I64),
        (TypeId::of::<u128>(), ElementType::U128),
        (TypeId::of::<i128>(), ElementType::I128),
        (TypeId::of::<f32>(), ElementType::F32),
        (TypeId::of::<f64>(), ElementType::F64),
    ];
    table.iter().find(|(t, _)| *t == id).map(|(_, e)| *e)
}

/// The encoding a slice of `T` is recorded with on this machine.
pub(crate) fn slice_encoding<T: bytemuck::Pod>() -> Result<Encoding> {
    let size = std::mem::size_of::<T>();
    let element = match element_type_of::<T>() {
        Some(e) => e,
        None => ElementType::Opaque(
            u16::try_from(size).ok().filter(|&s| (1..=ElementType::MAX_OPAQUE).contains(&s)).ok_or_else(|| {
                Error::invalid(format!(
                    "elements of {size} bytes cannot be recorded (at most {} bytes)",
                    ElementType::MAX_OPAQUE
                ))
            })?,
        ),
    };
    Ok(Encoding::Slice { element, big_endian: cfg!(target_endian = "big") })
}

/// How a section recorded as `stored` can be read as a slice of `T` on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SliceRead {
    /// The bytes are `T`s as this machine lays them out.
    AsIs,
    /// The bytes are `T`s of the other byte order: each element's bytes are reversed.
    Swap,
}

/// Checks that a section of `encoding` and `raw_len` bytes can be read as `[T]`.
pub(crate) fn check_slice_read<T: bytemuck::Pod>(encoding: Encoding, raw_len: u64) -> Result<SliceRead> {
    let size = std::mem::size_of::<T>();
    let wanted = slice_encoding::<T>()?;
    let how = match (encoding, wanted) {
        // Plain bytes (add_bytes, the C API, files written before typed slices): nothing recorded to check.
        (Encoding::Bytes, _) => SliceRead::AsIs,
        (Encoding::Slice { element, big_endian }, Encoding::Slice { element: want, big_endian: here })
            if element == want =>
        {
            if big_endian == here {
                SliceRead::AsIs
            } else if element.swappable() {
                SliceRead::Swap
            } else {
                return Err(Error::new(
                    ErrorKind::Encoding,
                    format!(
                        "the section holds {} written on a {} machine: elements of a type ckpt does not know \
                         cannot be converted to this machine's byte order",
                        element.name(),
                        if big_endian { "big-endian" } else { "little-endian" }
                    ),
                ));
            }
        }
        (Encoding::Slice { element, big_endian }, _) => {
            return Err(Error::new(
                ErrorKind::Encoding,
                format!(
                    "the section holds {} ({}), not {} (`{}`)",
                    element.name(),
                    if big_endian { "big-endian" } else { "little-endian" },
                    wanted_name(wanted),
                    std::any::type_name::<T>()
                ),
            ));
        }
        (other, _) => {
            return Err(Error::new(
                ErrorKind::Encoding,
                format!("the section is encoded as {}, not a slice of `{}`", other.name(), std::any::type_name::<T>()),
            ));
        }
    };
    if !raw_len.is_multiple_of(size as u64) {
        return Err(Error::new(
            ErrorKind::Encoding,
            format!(
                "the section's {raw_len} bytes are not a whole number of {size}-byte `{}`",
                std::any::type_name::<T>()
            ),
        ));
    }
    Ok(how)
}

fn wanted_name(e: Encoding) -> String {
    match e {
        Encoding::Slice { element, .. } => element.name(),
        other => other.name(),
    }
}

/// Reverses the bytes of every `size`-byte element of `bytes`.
pub(crate) fn swap_elements(bytes: &mut [u8], size: usize) {
    for chunk in bytes.chunks_exact_mut(size) {
        chunk.reverse();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct State {
        step: u64,
        energy: f64,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    enum Mode {
        A,
        B(u32),
    }

    #[test]
    fn shapes_come_from_deserialize() {
        assert_eq!(shape::<State>().as_deref(), Some("struct State {step,energy}"));
        assert_eq!(shape::<Mode>().as_deref(), Some("enum Mode {A,B}"));
        assert_eq!(shape::<f64>().as_deref(), Some("f64"));
        assert_eq!(shape::<Vec<u32>>().as_deref(), Some("seq"));
        assert_eq!(shape::<(u32, i64)>().as_deref(), Some("tuple 2"));
    }

    #[test]
    fn short_names_drop_module_paths() {
        assert_eq!(short_type_name("app::sim::State<alloc::vec::Vec<f64>>"), "State<Vec<f64>>");
        assert_eq!(short_type_name("(u32, alloc::string::String)"), "(u32, String)");
        assert_eq!(short_type_name("[f64; 3]"), "[f64; 3]");
    }

    #[test]
    fn fingerprints_round_trip_and_refuse_other_types() {
        let f = Fingerprint::of::<State>();
        let mut bytes = f.encode();
        bytes.extend_from_slice(b"rest");
        let (back, rest) = Fingerprint::decode(&bytes).unwrap();
        assert_eq!((back.clone(), rest), (f.clone(), &b"rest"[..]));
        back.check_read_as(&Fingerprint::of::<State>()).unwrap();
        let e = back.check_read_as(&Fingerprint::of::<Vec<u32>>()).unwrap_err();
        assert!(e.message().contains("not `alloc::vec::Vec<u32>`"), "{e}");
        // Same name, other fields: the schema differs.
        let moved = Fingerprint { type_name: "other::module::State".into(), schema: f.schema };
        moved.check_read_as(&f).unwrap();
        let changed = Fingerprint { type_name: f.type_name.clone(), schema: f.schema ^ 1 };
        let e = changed.check_read_as(&f).unwrap_err();
        assert!(e.message().contains("shape"), "{e}");
        for cut in 0..bytes.len() - 4 {
            assert!(Fingerprint::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    mod sections {
        use std::borrow::Cow;

        use serde::{Deserialize, Serialize};

        use crate::{Checkpoint, Config, ElementType, Encoding, ErrorKind, LoadOptions, Store};

        fn store(dir: &std::path::Path, compression: crate::Compression) -> Store {
            let mut config = Config::new("typed", dir).unwrap();
            config.compression = compression;
            Store::new(config)
        }

        fn open(path: &std::path::Path, mmap: bool) -> Checkpoint {
            Checkpoint::open_with(&crate::storage::FileStorage, path, LoadOptions { mmap }).unwrap()
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Skips {
            step: u64,
            #[serde(skip_serializing_if = "Option::is_none")]
            note: Option<String>,
            energy: f64,
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct State {
            step: u64,
            energy: f64,
        }

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Renamed {
            step: u64,
            energy: f64,
        }

        /// The reproducer: it saved, and could not be read back. Now the save fails, saying why.
        #[test]
        fn what_postcard_cannot_represent_fails_at_save_time() {
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path(), crate::Compression::None);
            let e = store.save_serde(1, &Skips { step: 1, note: None, energy: 2.0 }).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Encoding, "{e}");
            assert!(e.message().contains("would not load again") && e.message().contains("skip_serializing_if"), "{e}");
            assert!(store.restore().unwrap().is_none(), "nothing was committed");
            // `serde_json::Value` needs deserialize_any.
            let e = store.save_serde(1, &serde_json::json!({"a": 1})).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Encoding, "{e}");
            // The same struct with the field present round-trips.
            let ok = Skips { step: 1, note: Some("x".into()), energy: 2.0 };
            store.save_serde(2, &ok).unwrap();
            let r = store.restore().unwrap().unwrap();
            assert_eq!(r.checkpoint.read_serde::<Skips>("state").unwrap(), ok);
        }

        /// `[1.0, 2.0]` read as `Vec<u32>` returned `Ok([0, 0])`: now the type and the leftover bytes are
        /// both refused.
        #[test]
        fn another_type_is_refused() {
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path(), crate::Compression::None);
            let info = store.save_serde(1, &vec![1.0f64, 2.0]).unwrap();
            let cp = open(&info.path, true);
            assert_eq!(cp.section("state").unwrap().encoding, Encoding::TypedPostcard);
            assert_eq!(cp.read_serde::<Vec<f64>>("state").unwrap(), vec![1.0, 2.0]);
            let e = cp.read_serde::<Vec<u32>>("state").unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Encoding);
            assert!(e.to_string().contains("holds a `alloc::vec::Vec<f64>` value, not `alloc::vec::Vec<u32>`"), "{e}");
            // Without the type check, the leftover bytes still give it away.
            let e = cp.read_serde_unchecked::<Vec<u32>>("state").unwrap_err();
            assert!(e.to_string().contains("used 3 of the section's 17 bytes"), "{e}");
            let info = store.save_serde(2, &State { step: 3, energy: 1.5 }).unwrap();
            let cp = open(&info.path, false);
            let e = cp.read_serde::<Renamed>("state").unwrap_err();
            assert!(e.to_string().contains("not `ckpt_core::typed::tests::sections::Renamed`"), "{e}");
            assert_eq!(cp.read_serde_unchecked::<Renamed>("state").unwrap(), Renamed { step: 3, energy: 1.5 });
        }

        /// Sections written before fingerprints (plain postcard, encoding 1) still read, strictly.
        #[test]
        fn plain_postcard_sections_still_read() {
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path(), crate::Compression::None);
            let mut w = store.begin(1).unwrap();
            let opts = crate::SectionOptions::new().encoding(Encoding::Postcard);
            w.add_section_with("old", &postcard::to_allocvec(&State { step: 9, energy: 0.5 }).unwrap(), opts).unwrap();
            let opts = crate::SectionOptions::new().encoding(Encoding::Postcard);
            w.add_section_with("floats", &postcard::to_allocvec(&vec![1.0f64, 2.0]).unwrap(), opts).unwrap();
            let info = w.commit().unwrap();
            let cp = open(&info.path, true);
            assert_eq!(cp.read_serde::<State>("old").unwrap(), State { step: 9, energy: 0.5 });
            let e = cp.read_serde::<Vec<u32>>("floats").unwrap_err();
            assert!(e.to_string().contains("used 3 of the section's 17 bytes"), "{e}");
        }

        #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
        #[repr(C)]
        struct Particle {
            pos: [f32; 3],
            id: u32,
        }

        #[test]
        fn slices_round_trip_zero_copy_when_mapped() {
            let compressions: &[crate::Compression] = if cfg!(feature = "zstd") {
                &[crate::Compression::None, crate::Compression::Zstd(1)]
            } else {
                &[crate::Compression::None]
            };
            for &compression in compressions {
                let dir = tempfile::tempdir().unwrap();
                let store = store(dir.path(), compression);
                let field: Vec<f64> = (0..10_000).map(|i| f64::from(i) * 0.25).collect();
                let parts = [Particle { pos: [1.0, 2.0, 3.0], id: 7 }; 5];
                let mut w = store.begin(1).unwrap();
                w.add_slice("field", &field).unwrap();
                w.add_slice("particles", &parts).unwrap();
                w.add_bytes("bytes", &[1u8, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0]).unwrap();
                let info = w.commit().unwrap();
                for mmap in [true, false] {
                    let cp = open(&info.path, mmap);
                    let e = cp.section("field").unwrap();
                    assert_eq!(e.encoding, Encoding::Slice { element: ElementType::F64, big_endian: false });
                    assert_eq!(e.encoding.to_u16(), 0x010C);
                    let read = cp.read_slice::<f64>("field").unwrap();
                    assert_eq!(&read[..], &field[..]);
                    let zero_copy = mmap && compression == crate::Compression::None;
                    assert_eq!(matches!(read, Cow::Borrowed(_)), zero_copy, "mmap {mmap}, {compression:?}");
                    assert_eq!(&cp.read_slice::<Particle>("particles").unwrap()[..], &parts[..]);
                    assert_eq!(
                        cp.section("particles").unwrap().encoding,
                        Encoding::Slice { element: ElementType::Opaque(16), big_endian: false }
                    );
                    let mut decoded = vec![0.0f64; field.len()];
                    cp.read_into_slice("field", &mut decoded).unwrap();
                    assert_eq!(decoded, field);
                    assert_eq!(&cp.read_slice::<u32>("bytes").unwrap()[..], &[1, 2, 3]);
                    // Another element type, another length, a serde section: refused with the reason.
                    let e = cp.read_slice::<u64>("field").unwrap_err();
                    assert_eq!(e.kind(), ErrorKind::Encoding);
                    assert!(e.to_string().contains("holds f64 (little-endian), not u64"), "{e}");
                    let e = cp.read_slice::<[f32; 3]>("particles").unwrap_err();
                    assert!(e.to_string().contains("holds 16-byte elements (little-endian), not 12-byte"), "{e}");
                    // Only the size of a type ckpt does not know is recorded.
                    assert_eq!(cp.read_slice::<[u32; 4]>("particles").unwrap().len(), 5);
                    let e = cp.read_slice::<u64>("bytes").unwrap_err();
                    assert!(e.to_string().contains("not a whole number"), "{e}");
                    let mut short = vec![0.0f64; 3];
                    assert_eq!(cp.read_into_slice("field", &mut short).unwrap_err().kind(), ErrorKind::InvalidArgument);
                }
            }
        }

        /// A section written on a machine of the other byte order is converted (number types only).
        #[test]
        fn the_other_byte_order_is_converted() {
            #[derive(Clone, Copy, Debug, bytemuck::Pod, bytemuck::Zeroable)]
            #[repr(C)]
            struct Eight([u8; 8]);
            let dir = tempfile::tempdir().unwrap();
            let store = store(dir.path(), crate::Compression::None);
            let values = [1.5f64, -2.0, 1e300];
            let swapped: Vec<u8> = values.iter().flat_map(|v| v.to_be_bytes()).collect();
            let other = Encoding::Slice { element: ElementType::F64, big_endian: true };
            assert_eq!(Encoding::from_u16(other.to_u16()), other);
            let mut w = store.begin(1).unwrap();
            w.add_section_with("be", &swapped, crate::SectionOptions::new().encoding(other)).unwrap();
            let opaque = Encoding::Slice { element: ElementType::Opaque(8), big_endian: true };
            w.add_section_with("opaque", &swapped, crate::SectionOptions::new().encoding(opaque)).unwrap();
            let info = w.commit().unwrap();
            let cp = open(&info.path, true);
            assert_eq!(&cp.read_slice::<f64>("be").unwrap()[..], &values[..]);
            let mut decoded = [0.0f64; 3];
            cp.read_into_slice("be", &mut decoded).unwrap();
            assert_eq!(decoded.map(f64::to_bits), values.map(f64::to_bits), "bit for bit");
            let e = cp.read_slice::<Eight>("opaque").unwrap_err();
            assert!(e.to_string().contains("byte order"), "{e}");
        }
    }
}

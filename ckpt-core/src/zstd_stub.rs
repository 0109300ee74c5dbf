//! What the code uses of the `zstd` crate, for builds without the `zstd` feature (no C compiler needed).
//! Every constructor fails with [`std::io::ErrorKind::Unsupported`], so a save asking for compression
//! fails with a message naming the feature, `auto` stores sections raw, and a compressed section fails to
//! read; the types are uninhabited, so nothing else can be reached.

use std::convert::Infallible;
use std::io;
use std::marker::PhantomData;

fn unsupported<T>() -> io::Result<T> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "zstd is not available: ckpt-core was built without its `zstd` feature",
    ))
}

pub mod stream {
    pub mod raw {
        use super::super::*;

        /// Stands for `zstd::stream::raw::Status`.
        pub struct Status {
            pub bytes_read: usize,
            pub bytes_written: usize,
        }

        /// Stands for `zstd::stream::raw::InBuffer`.
        pub struct InBuffer<'a> {
            pos: usize,
            _src: PhantomData<&'a [u8]>,
        }

        impl<'a> InBuffer<'a> {
            pub fn around(_src: &'a [u8]) -> InBuffer<'a> {
                InBuffer { pos: 0, _src: PhantomData }
            }
            pub fn pos(&self) -> usize {
                self.pos
            }
        }

        /// Stands for `zstd::stream::raw::OutBuffer`.
        pub struct OutBuffer<'a> {
            pos: usize,
            _dst: PhantomData<&'a mut [u8]>,
        }

        impl<'a> OutBuffer<'a> {
            pub fn around(_dst: &'a mut [u8]) -> OutBuffer<'a> {
                OutBuffer { pos: 0, _dst: PhantomData }
            }
            pub fn pos(&self) -> usize {
                self.pos
            }
        }

        /// Stands for `zstd::stream::raw::Operation`.
        pub trait Operation {
            fn run(&mut self, input: &mut InBuffer<'_>, output: &mut OutBuffer<'_>) -> io::Result<usize>;
            fn run_on_buffers(&mut self, input: &[u8], output: &mut [u8]) -> io::Result<Status>;
            fn finish(&mut self, output: &mut OutBuffer<'_>, finished_frame: bool) -> io::Result<usize>;
        }

        /// Stands for `zstd::stream::raw::Encoder` (never constructed).
        pub struct Encoder<'a>(Infallible, PhantomData<&'a ()>);
        /// Stands for `zstd::stream::raw::Decoder` (never constructed).
        pub struct Decoder<'a>(Infallible, PhantomData<&'a ()>);

        impl Encoder<'_> {
            pub fn new(_level: i32) -> io::Result<Self> {
                unsupported()
            }
            pub fn set_parameter(&mut self, _p: super::super::zstd_safe::CParameter) -> io::Result<()> {
                match self.0 {}
            }
        }

        impl Decoder<'_> {
            pub fn new() -> io::Result<Self> {
                unsupported()
            }
        }

        macro_rules! uninhabited_operation {
            ($t:ident) => {
                impl Operation for $t<'_> {
                    fn run(&mut self, _: &mut InBuffer<'_>, _: &mut OutBuffer<'_>) -> io::Result<usize> {
                        match self.0 {}
                    }
                    fn run_on_buffers(&mut self, _: &[u8], _: &mut [u8]) -> io::Result<Status> {
                        match self.0 {}
                    }
                    fn finish(&mut self, _: &mut OutBuffer<'_>, _: bool) -> io::Result<usize> {
                        match self.0 {}
                    }
                }
            };
        }
        uninhabited_operation!(Encoder);
        uninhabited_operation!(Decoder);
    }
}

pub mod bulk {
    use super::*;

    /// Stands for `zstd::bulk::Compressor` (never constructed).
    pub struct Compressor<'a>(Infallible, PhantomData<&'a ()>);
    /// Stands for `zstd::bulk::Decompressor` (never constructed).
    pub struct Decompressor<'a>(Infallible, PhantomData<&'a ()>);

    impl Compressor<'_> {
        pub fn new(_level: i32) -> io::Result<Self> {
            unsupported()
        }
        pub fn set_parameter(&mut self, _p: super::zstd_safe::CParameter) -> io::Result<()> {
            match self.0 {}
        }
        pub fn compress_to_buffer(&mut self, _src: &[u8], _dst: &mut [u8]) -> io::Result<usize> {
            match self.0 {}
        }
    }

    impl Decompressor<'_> {
        pub fn new() -> io::Result<Self> {
            unsupported()
        }
        pub fn decompress_to_buffer(&mut self, _src: &[u8], _dst: &mut [u8]) -> io::Result<usize> {
            match self.0 {}
        }
    }
}

pub mod zstd_safe {
    /// Stands for `zstd_safe::CParameter`.
    #[allow(dead_code, reason = "the parameter is built by the callers, never used: nothing compresses")]
    pub enum CParameter {
        ChecksumFlag(bool),
    }

    /// zstd's bound on a compressed frame (`ZSTD_COMPRESSBOUND`), for buffer sizes.
    pub fn compress_bound(n: usize) -> usize {
        n + (n >> 8) + if n < (128 << 10) { ((128 << 10) - n) >> 11 } else { 0 }
    }

    /// No frame header is read without zstd: the reader's own checks stand.
    #[allow(
        clippy::unnecessary_wraps,
        reason = "the signature of zstd_safe::get_frame_content_size, so the reader calls both the same way"
    )]
    pub fn get_frame_content_size(_src: &[u8]) -> Result<Option<u64>, ()> {
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Compression, Config, ErrorKind, SectionOptions, Store};

    /// Without the feature: a compressed save fails naming the feature, `auto` stores raw.
    #[test]
    fn compression_without_zstd_fails_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(Config::new("nozstd", dir.path()).unwrap());
        let mut w = store.begin(1).unwrap();
        let e =
            w.add_section_with("z", &[0u8; 4096], SectionOptions::new().compression(Compression::Zstd(3))).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Io);
        assert!(e.to_string().contains("`zstd` feature"), "{e}");
        drop(w);
        let mut w = store.begin(2).unwrap();
        w.add_section_with("a", &vec![0u8; 1 << 20], SectionOptions::new().compression(Compression::Auto)).unwrap();
        let info = w.commit().unwrap();
        let cp = crate::Checkpoint::open(&info.path).unwrap();
        assert_eq!(cp.section("a").unwrap().codec, crate::Codec::None);
        assert_eq!(cp.read("a").unwrap().len(), 1 << 20);
    }
}

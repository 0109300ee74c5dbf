//! The process image written by the LD_PRELOAD shim (`ckpt-preload`) and read by `ckpt restart`.
//!
//! A process image is an ordinary checkpoint file (same container, CRCs, atomic commit, retention,
//! names) with two sections:
//!
//! * [`STATE_SECTION`] (postcard): a [`ProcessImage`]: what the restorer needs besides memory contents
//!   (regions, fds, signal actions, timers, registers' location, the environment fingerprint);
//! * [`MEMORY_SECTION`] (raw, uncompressed): the saved pages, run after run, in the order of
//!   [`Region::runs`]. Untouched and all-zero pages are not stored: a region is mapped zero-filled and
//!   only its runs are read into place, straight from the file (no copy).
//!
//! The layout of `ProcessImage` is versioned by [`PROCESS_IMAGE_VERSION`]; readers refuse other versions
//! with a message (an image holds the shim's own code and data, so only the build that wrote it can
//! restore it anyway).
//!
//! Layouts: 1, the first; 2, descriptors that share one open file description ([`FdRecord::dup_of`]) and
//! descriptors inherited from the launcher that cannot be restored ([`FdKind::ForeignNull`],
//! [`FdKind::ForeignClosed`]).
//!
//! The image's types are defined in a private module and re-exported here; [`discover`] opens and chooses images
//! for `ckpt restart`; [`control`] is `ckpt create`'s request/reply exchange.

pub mod control;
pub mod discover;
mod fingerprint;
mod image;
mod marker;
mod opened;
pub mod tree;

pub use fingerprint::{cpu_features, fingerprint, fingerprint_mismatch};
pub use image::*;
pub use marker::*;
pub use opened::OpenedFile;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_markers() {
        let m = RootMarker { pid: 4242, start: 987654, nonce: 0xabc };
        let t = m.format();
        assert_eq!(t.len(), ROOT_MARKER_LEN);
        assert_eq!(RootMarker::parse(&t), Ok(m));
        assert!(RootMarker::parse("4242").unwrap_err().contains("bare pid"));
        for bad in ["", "1:2", "1:2:", "x:2:3", "1:2:3:4", "1:2:zz", "1:-2:3", "1:2:11111111111111111"] {
            assert!(RootMarker::parse(bad).is_err(), "{bad}");
        }
        #[cfg(not(miri))]
        {
            let me = RootMarker::for_self().unwrap();
            assert!(me.names_self());
            assert!(!RootMarker { start: me.start + 1, ..me }.names_self(), "another start time");
            assert!(!RootMarker { pid: me.pid + 1, ..me }.names_self(), "another pid");
        }
    }

    #[test]
    fn stat_start_time() {
        let line = b"77 (a b) c) S 1 77 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 123456 1000 200 rest";
        assert_eq!(parse_stat_start_time(line), Some(123456));
        assert_eq!(parse_stat_start_time(b"77 (x) S 1"), None);
    }

    #[test]
    fn registrations() {
        let r = Registration { signal: 10, exit_signal: 15, start: 99, boot: "b-1".into() };
        assert_eq!(Registration::parse(&r.format()), Ok(r));
        assert!(Registration::parse("signal=10\nexit_signal=15\n").unwrap_err().contains("older shim"));
        assert!(Registration::parse("signal=99\nexit_signal=15\nstart=1\nboot=x\n").is_err());
    }

    pub(crate) fn image() -> ProcessImage {
        let region = |start: u64, end: u64, runs: Vec<Run>| Region {
            start,
            end,
            prot: 3,
            kind: RegionKind::Anonymous,
            path: Vec::new(),
            file_offset: 0,
            identity: None,
            runs,
        };
        ProcessImage {
            version: PROCESS_IMAGE_VERSION,
            exe: b"/bin/true".to_vec(),
            exe_identity: FileIdentity::default(),
            argv: vec![],
            envp: vec![],
            cwd: b"/".to_vec(),
            umask: 0o22,
            rlimit_stack: (8 << 20, u64::MAX),
            personality: 0,
            fingerprint: Fingerprint::default(),
            brk: 0,
            fs_base: 0,
            tid_offset: None,
            rseq: None,
            sigframe: 0x11000,
            sigactions: vec![],
            sigmask: 0,
            sigaltstack: (0, 0, 0),
            itimers: [ItimerRecord::default(); 3],
            fds: vec![
                FdRecord {
                    fd: 1,
                    kind: FdKind::Regular,
                    path: b"/out".to_vec(),
                    flags: 1,
                    cloexec: false,
                    offset: 10,
                    size: 10,
                    identity: Some(FileIdentity::default()),
                    shared: true,
                    dup_of: None,
                },
                FdRecord {
                    fd: 2,
                    kind: FdKind::Regular,
                    path: b"/out".to_vec(),
                    flags: 1,
                    cloexec: false,
                    offset: 10,
                    size: 10,
                    identity: Some(FileIdentity::default()),
                    shared: true,
                    dup_of: Some(1),
                },
                FdRecord {
                    fd: 7,
                    kind: FdKind::ForeignNull,
                    path: b"pipe:[42]".to_vec(),
                    flags: 1,
                    cloexec: false,
                    offset: -29,
                    size: 0,
                    identity: None,
                    shared: false,
                    dup_of: None,
                },
            ],
            regions: vec![
                region(0x10000, 0x12000, vec![Run { addr: 0x11000, len: 0x1000, data_offset: 0 }]),
                region(0x20000, 0x30000, vec![Run { addr: 0x20000, len: 0x2000, data_offset: 0x1000 }]),
            ],
            vdso: None,
            pid: 1,
            host: "h".into(),
            sequence: 1,
            pause_us: 0,
            time_unix: 0.0,
            restarts: 0,
        }
    }

    #[test]
    fn a_consistent_image_validates_and_round_trips() {
        let img = image();
        img.validate().unwrap();
        assert_eq!(img.saved_bytes(), 0x3000);
        let back: ProcessImage = postcard::from_bytes(&encode(&img).unwrap()).unwrap();
        assert_eq!(back, img);
    }

    #[test]
    fn each_inconsistency_is_named() {
        type Damage = fn(&mut ProcessImage);
        let cases: Vec<(Damage, &str)> = vec![
            (|i| i.regions[0].start = 0x10001, "page-aligned"),
            (|i| i.regions[1].start = 0x11000, "overlaps"),
            (|i| i.regions[1].end = 0x0000_8000_0000_1000, "page-aligned user range"),
            (|i| i.regions[0].prot = 8, "protection"),
            (|i| i.regions[0].runs[0].addr = 0x12000, "inside region 0"),
            (|i| i.regions[0].runs[0].len = u64::MAX - 0xfff, "inside region 0"),
            (|i| i.regions[1].runs[0].data_offset = 0, "expected 0x1000"),
            (|i| i.sigframe = 0x40000, "signal frame"),
            (|i| i.regions[0].kind = RegionKind::Guard, "inaccessible"),
            (|i| i.fds[1].dup_of = Some(7), "not an earlier descriptor of the same kind"),
            (|i| i.fds[1].dup_of = Some(2), "not an earlier descriptor of the same kind"),
            (|i| i.fds[1].kind = FdKind::Directory, "not an earlier descriptor of the same kind"),
            (|i| i.fds[2].fd = 1, "listed twice"),
        ];
        for (damage, needle) in cases {
            let mut img = image();
            damage(&mut img);
            let e = img.validate().expect_err(needle);
            assert!(e.contains(needle), "{e:?} should mention {needle:?}");
        }
    }

    #[test]
    fn foreign_fd_settings() {
        assert_eq!(ForeignFds::parse(None), Ok(ForeignFds::DevNull));
        assert_eq!(ForeignFds::parse(Some("")), Ok(ForeignFds::DevNull));
        assert_eq!(ForeignFds::parse(Some("devnull")), Ok(ForeignFds::DevNull));
        assert_eq!(ForeignFds::parse(Some(" Close ")), Ok(ForeignFds::Close));
        assert_eq!(ForeignFds::parse(Some("refuse")), Ok(ForeignFds::Refuse));
        let e = ForeignFds::parse(Some("null")).unwrap_err();
        assert!(e.contains("CKPT_SHIM_FOREIGN_FDS") && e.contains("devnull, close, refuse"), "{e}");
        for f in [ForeignFds::DevNull, ForeignFds::Close, ForeignFds::Refuse] {
            assert_eq!(ForeignFds::parse(Some(f.name())), Ok(f));
        }
    }

    #[test]
    fn fingerprints_compare_by_what_a_restart_needs() {
        let now = Fingerprint {
            kernel_release: "6.1".into(),
            machine: "x86_64".into(),
            libc_version: "2.36".into(),
            cpu_features: vec![0b1111, 0b1],
            page_size: 4096,
        };
        assert_eq!(fingerprint_mismatch(&now, &now), None);
        let mut fewer = now.clone();
        fewer.cpu_features = vec![0b0111, 0b1];
        assert_eq!(fingerprint_mismatch(&fewer, &now), None, "a CPU with more features is fine");
        assert!(fingerprint_mismatch(&now, &fewer).unwrap().contains("lacks features"));
        let mut k = now.clone();
        k.kernel_release = "6.2".into();
        assert!(fingerprint_mismatch(&k, &now).unwrap().contains("kernel"));
    }
}

#[cfg(test)]
mod golden {
    use super::*;
    use crate::image::check_version;

    /// Layout 2 of the state section, pinned: a change to `ProcessImage` that is not a new layout version
    /// fails here (images already written must stay readable).
    #[test]
    fn state_section_layout_2_is_pinned() {
        // Committed once; never regenerated (CKPT_WRITE_GOLDEN=1 only creates it when missing).
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/process-image-v2.state");
        let image = tests::image();
        let encoded = encode(&image).unwrap();
        if std::env::var_os("CKPT_WRITE_GOLDEN").is_some() && !std::path::Path::new(path).exists() {
            std::fs::write(path, &encoded).unwrap();
        }
        let golden = std::fs::read(path).expect("ckpt-image/testdata/process-image-v2.state");
        assert_eq!(encoded, golden, "the layout of ProcessImage changed: bump PROCESS_IMAGE_VERSION");
        let back: ProcessImage = postcard::from_bytes(&golden).unwrap();
        assert_eq!(back, image);
    }

    /// A layout-1 state section (written by the previous version) is refused by its version, with a
    /// message, before its fields are decoded as this layout's.
    #[test]
    fn state_section_layout_1_is_refused_by_its_version() {
        let v1 = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/process-image-v1.state")).unwrap();
        let version: u32 = postcard::from_bytes(&v1).unwrap();
        assert_eq!(version, 1);
        let e = check_version(version).unwrap_err();
        assert_eq!(e.kind(), ckpt_core::ErrorKind::UnsupportedVersion);
        assert!(e.to_string().contains("layout 1 (this build reads 2 to 4)"), "{e}");
        assert!(e.to_string().contains("another version of ckpt"), "{e}");
        assert!(check_version(PROCESS_IMAGE_VERSION).is_ok());
        assert!(check_version(PROCESS_IMAGE_VERSION_THREADS).is_ok());
        assert!(check_version(crate::tree::PROCESS_IMAGE_VERSION_TREE).is_ok());
        assert!(check_version(crate::tree::PROCESS_IMAGE_VERSION_TREE + 1).is_err());
    }
}

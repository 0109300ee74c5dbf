//! Process trees: a program and the child processes it started (a shell pipeline, `popen`, forked
//! workers), checkpointed together and restored together.
//!
//! The image of the process `ckpt run` started (the *root*) holds the whole tree: its own state and memory
//! as always, a [`TREE_SECTION`] listing the other processes (*members*) with their parents, and each
//! member's complete process image, stored as a raw section of its own ([`member_section`]). One file
//! is one checkpoint: committed, verified, pruned and discovered like a single-process image. Every
//! process of the tree records the unread bytes of the pipes it reads from ([`PIPES_SECTION`]) and its
//! pipe descriptors as [`FdKind::TreePipe`]; the root's tree section records which descriptors of a
//! member share an open file description with its parent's descriptor of the same number (an output
//! file every process of a pipeline writes to, `> log 2>&1`).
//!
//! Images that are part of a tree have layout [`PROCESS_IMAGE_VERSION_TREE`]: builds that do not know
//! trees refuse them instead of restoring the root alone.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::image::encode_section;
use crate::{FdKind, ProcessImage};

/// Layout of an image that belongs to a process tree (the root's and every member's): layout 3 (the
/// threads section present when the process has more than one thread) plus this module's sections and
/// [`FdKind::TreePipe`] descriptors.
pub const PROCESS_IMAGE_VERSION_TREE: u32 = 4;
/// Section of the root's image listing the members ([`TreeSection`], postcard).
pub const TREE_SECTION: &str = "process.tree";
/// Section of every tree image holding the unread bytes of the pipes the process reads from
/// ([`PipeContents`], postcard).
pub const PIPES_SECTION: &str = "process.pipes";
/// Most processes in a tree, the root included.
pub const MAX_TREE: usize = 64;
/// Most unread bytes recorded per pipe (Linux's default maximum pipe size, `/proc/sys/fs/pipe-max-size`).
pub const MAX_PIPE_BYTES: usize = 1 << 20;

/// The raw section of the root's image holding member `index`'s complete process image.
pub fn member_section(index: usize) -> String {
    format!("process.member.{index}")
}

/// One member of a tree.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeMember {
    /// Its pid at checkpoint time.
    pub pid: i32,
    /// Its parent's pid at checkpoint time (the root's or another member's).
    pub ppid: i32,
    /// Its command name (`/proc/<pid>/comm`), for messages.
    pub comm: String,
    /// The section holding its image ([`member_section`]).
    pub section: String,
}

/// A member's descriptor that shares its open file description with the descriptor of the same number in
/// its parent (inherited across `fork`): restored as one description again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InheritedFd {
    /// The member's pid at checkpoint time.
    pub pid: i32,
    /// The descriptor number (the same in the parent).
    pub fd: i32,
}

/// The root image's [`TREE_SECTION`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeSection {
    /// Every member, parents before their children.
    pub members: Vec<TreeMember>,
    /// Descriptors shared with the parent's of the same number.
    pub inherited: Vec<InheritedFd>,
}

/// The unread bytes of each pipe a process could read from at checkpoint time, by pipe inode.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PipeContents {
    /// (pipe inode, its capacity in bytes, the unread bytes).
    pub pipes: Vec<(u64, u32, Vec<u8>)>,
}

/// Encodes the tree section.
pub fn encode_tree(tree: &TreeSection) -> ckpt_core::Result<Vec<u8>> {
    encode_section(tree, TREE_SECTION)
}

/// Encodes the pipes section.
pub fn encode_pipes(pipes: &PipeContents) -> ckpt_core::Result<Vec<u8>> {
    encode_section(pipes, PIPES_SECTION)
}

/// The tree section of a verified root image (`None`: a single process), checked: members listed once,
/// each parent listed before its children, at most [`MAX_TREE`] processes.
pub fn read_tree(cp: &ckpt_core::Checkpoint, image: &ProcessImage) -> ckpt_core::Result<Option<TreeSection>> {
    let corrupt = |m: String| Err(ckpt_core::Error::new(ckpt_core::ErrorKind::Corrupt, m).with_path(cp.path()));
    if !cp.has_section(TREE_SECTION) {
        return Ok(None);
    }
    if image.version != PROCESS_IMAGE_VERSION_TREE {
        return corrupt(format!("a layout-{} process image with a {TREE_SECTION} section", image.version));
    }
    let tree: TreeSection = cp.read_serde(TREE_SECTION)?;
    if tree.members.is_empty() || tree.members.len() >= MAX_TREE {
        return corrupt(format!("a process tree of {} members", tree.members.len()));
    }
    let mut known = vec![image.pid];
    for (i, m) in tree.members.iter().enumerate() {
        if known.contains(&m.pid) || !known.contains(&m.ppid) || m.section != member_section(i) {
            return corrupt(format!("member {} (pid {}) of the process tree is invalid or out of order", i, m.pid));
        }
        if !cp.has_section(&m.section) {
            return corrupt(format!("the process tree lists {} without its section", m.section));
        }
        known.push(m.pid);
    }
    if let Some(f) = tree.inherited.iter().find(|f| !known[1..].contains(&f.pid)) {
        return corrupt(format!("the process tree's shared descriptors name pid {}, not a member", f.pid));
    }
    Ok(Some(tree))
}

/// The pipes section of a verified tree image (empty when it has none).
pub fn read_pipes(cp: &ckpt_core::Checkpoint) -> ckpt_core::Result<PipeContents> {
    if !cp.has_section(PIPES_SECTION) {
        return Ok(PipeContents::default());
    }
    let p: PipeContents = cp.read_serde(PIPES_SECTION)?;
    if let Some(bad) =
        p.pipes.iter().find(|(_, cap, bytes)| bytes.len() > MAX_PIPE_BYTES || bytes.len() > *cap as usize)
    {
        return Err(ckpt_core::Error::new(
            ckpt_core::ErrorKind::Corrupt,
            format!("pipe {} holds {} bytes, more than it can", bad.0, bad.2.len()),
        )
        .with_path(cp.path()));
    }
    Ok(p)
}

/// The pipe inode of a [`FdKind::TreePipe`] descriptor's path (`pipe:[inode]`).
pub fn pipe_inode(path: &[u8]) -> Option<u64> {
    std::str::from_utf8(path.strip_prefix(b"pipe:[")?.strip_suffix(b"]")?).ok()?.parse().ok()
}

/// How one pipe of a tree is restored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PipeRole {
    /// Both ends are held inside the tree: recreated, with its unread bytes put back.
    Recreated,
    /// Only one end is held inside the tree, by the root on a standard descriptor (the job's output
    /// piped to `tee`, its input from a pipe): every holder gets the restart command's descriptor of
    /// that number.
    Outside(i32),
    /// A pipe the root inherited from its launcher above stderr, which `CKPT_SHIM_FOREIGN_FDS` restores
    /// as `/dev/null` or closed in the root: the members that hold it get `/dev/null`.
    Foreign,
}

/// Every pipe of a tree (by inode) and how it is restored; `processes` lists each process's pid and
/// image, the root first. Refuses (with the reason) a pipe that leads out of the tree other than through
/// the root's standard descriptors: a process outside the tree holds its other end.
pub fn classify_pipes(processes: &[(i32, &ProcessImage)]) -> Result<BTreeMap<u64, PipeRole>, String> {
    let mut ends: BTreeMap<u64, (bool, bool, Option<i32>, Vec<String>)> = BTreeMap::new();
    for (k, (pid, image)) in processes.iter().enumerate() {
        for f in image.fds.iter().filter(|f| f.kind == FdKind::TreePipe) {
            let ino = pipe_inode(&f.path).ok_or_else(|| format!("descriptor {} of process {pid}: not a pipe", f.fd))?;
            let e = ends.entry(ino).or_default();
            match f.flags & libc::O_ACCMODE {
                libc::O_RDONLY => e.0 = true,
                libc::O_WRONLY => e.1 = true,
                _ => {
                    e.0 = true;
                    e.1 = true;
                }
            }
            if k == 0 && (0..=2).contains(&f.fd) {
                e.2.get_or_insert(f.fd);
            }
            e.3.push(format!("descriptor {} of process {pid}", f.fd));
        }
    }
    let foreign: Vec<u64> = processes
        .first()
        .map(|(_, root)| {
            root.fds
                .iter()
                .filter(|f| matches!(f.kind, FdKind::ForeignNull | FdKind::ForeignClosed))
                .filter_map(|f| pipe_inode(&f.path))
                .collect()
        })
        .unwrap_or_default();
    let mut roles = BTreeMap::new();
    for (ino, (read, write, root_std, holders)) in ends {
        let role = match (read && write, root_std) {
            _ if foreign.contains(&ino) => PipeRole::Foreign,
            (true, _) => PipeRole::Recreated,
            (false, Some(fd)) => PipeRole::Outside(fd),
            (false, None) => {
                return Err(format!(
                    "pipe {ino} ({}) leads to a process outside the checkpointed tree",
                    holders.join(", ")
                ));
            }
        };
        roles.insert(ino, role);
    }
    Ok(roles)
}

/// Where `ckpt restart` takes a descriptor it gives a process of a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdSource {
    /// The read end of a recreated pipe (by inode at checkpoint time).
    PipeRead(u64),
    /// Its write end.
    PipeWrite(u64),
    /// The restart command's own descriptor of this number.
    Outer(i32),
    /// A file `ckpt restart` opens once for every process that shares it ([`TreeFds::opened`]).
    Opened(usize),
    /// `/dev/null`, opened with this access mode.
    DevNull(i32),
}

/// A file opened once for several processes (an output file every process of a pipeline writes to).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenSpec {
    /// Its path.
    pub path: Vec<u8>,
    /// Its status flags at checkpoint time.
    pub flags: i32,
    /// Its size then (a writable file is cut back to it, unless `at_end`).
    pub size: u64,
    /// The offset then.
    pub offset: i64,
    /// A regular file opened for writing: cut back to `size`.
    pub truncate: bool,
    /// Another process outside the tree writes it too: keep its output, continue at the end.
    pub at_end: bool,
}

/// A pipe recreated for a tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipeSpec {
    /// Its inode at checkpoint time.
    pub ino: u64,
    /// Its capacity then (0: unknown, the default).
    pub capacity: u32,
    /// The bytes it held, unread.
    pub bytes: Vec<u8>,
    /// Status flags of its read end (`O_NONBLOCK`).
    pub read_flags: i32,
    /// Status flags of its write end.
    pub write_flags: i32,
}

/// What `ckpt restart` creates for a tree, and which descriptor each process gets from what.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeFds {
    /// Pipes to recreate.
    pub pipes: Vec<PipeSpec>,
    /// Files to open once.
    pub opened: Vec<OpenSpec>,
    /// Per process (in the order given): (descriptor number, where it comes from).
    pub per_process: Vec<Vec<(i32, FdSource)>>,
}

/// One process of a tree as restart sees it.
pub struct TreeProcess<'a> {
    /// Its pid at checkpoint time.
    pub pid: i32,
    /// Its parent's then (the root's own: 0).
    pub ppid: i32,
    /// Its image.
    pub image: &'a ProcessImage,
    /// Its pipes section.
    pub pipes: &'a PipeContents,
}

/// The descriptors of a whole tree (`processes`, the root first): pipes by inode ([`classify_pipes`]),
/// and the open file descriptions members inherited from their parents ([`TreeSection::inherited`]),
/// each opened once. Descriptors that are neither are left to each process's restorer.
pub fn plan_fds(processes: &[TreeProcess<'_>], inherited: &[InheritedFd]) -> Result<TreeFds, String> {
    let images: Vec<(i32, &ProcessImage)> = processes.iter().map(|p| (p.pid, p.image)).collect();
    let roles = classify_pipes(&images)?;
    let mut out = TreeFds::default();
    for (&ino, role) in &roles {
        if *role != PipeRole::Recreated {
            continue;
        }
        let found = processes.iter().flat_map(|p| p.pipes.pipes.iter()).find(|(i, _, _)| *i == ino);
        let holders = processes
            .iter()
            .flat_map(|p| p.image.fds.iter())
            .filter(|f| f.kind == FdKind::TreePipe && pipe_inode(&f.path) == Some(ino));
        let (mut read_flags, mut write_flags) = (None, None);
        for f in holders {
            match f.flags & libc::O_ACCMODE {
                libc::O_WRONLY => write_flags = write_flags.or(Some(f.flags)),
                _ => read_flags = read_flags.or(Some(f.flags)),
            }
        }
        out.pipes.push(PipeSpec {
            ino,
            capacity: found.map_or(0, |f| f.1),
            bytes: found.map(|f| f.2.clone()).unwrap_or_default(),
            read_flags: read_flags.unwrap_or(libc::O_RDONLY),
            write_flags: write_flags.unwrap_or(libc::O_WRONLY),
        });
    }
    let index_of = |pid: i32| processes.iter().position(|p| p.pid == pid);
    let is_inherited = |pid: i32, fd: i32| inherited.iter().any(|f| f.pid == pid && f.fd == fd);
    // The descriptor whose description (pid, fd) holds: up the parents while inherited, then to the first
    // descriptor of a `dup` within the process.
    let leader = |mut pid: i32, fd: i32| -> Option<(usize, i32)> {
        let mut guard = 0;
        while is_inherited(pid, fd) && guard < MAX_TREE {
            pid = processes[index_of(pid)?].ppid;
            guard += 1;
        }
        let k = index_of(pid)?;
        let rec = processes[k].image.fds.iter().find(|f| f.fd == fd)?;
        Some((k, rec.dup_of.unwrap_or(fd)))
    };
    let mut groups: Vec<((usize, i32), usize)> = Vec::new();
    for p in processes {
        let mut given = Vec::new();
        for f in p.image.fds.iter().filter(|f| f.dup_of.is_none()) {
            if f.kind == FdKind::TreePipe {
                let ino =
                    pipe_inode(&f.path).ok_or_else(|| format!("descriptor {} of process {}: no pipe", f.fd, p.pid))?;
                let source = match roles.get(&ino) {
                    Some(PipeRole::Outside(n)) => FdSource::Outer(*n),
                    Some(PipeRole::Foreign) => FdSource::DevNull(f.flags & libc::O_ACCMODE),
                    _ if f.flags & libc::O_ACCMODE == libc::O_WRONLY => FdSource::PipeWrite(ino),
                    _ => FdSource::PipeRead(ino),
                };
                given.push((f.fd, source));
                continue;
            }
            // Shared with a parent, or shared by a child: one description for all of them.
            let shared_down = processes.iter().any(|c| c.ppid == p.pid && is_inherited(c.pid, f.fd));
            if !is_inherited(p.pid, f.fd) && !shared_down {
                continue;
            }
            let Some((lk, lfd)) = leader(p.pid, f.fd) else { continue };
            let Some(lrec) = processes[lk].image.fds.iter().find(|r| r.fd == lfd) else { continue };
            let source = match lrec.kind {
                FdKind::Inherited if lk == 0 => FdSource::Outer(lfd),
                FdKind::Regular | FdKind::Directory | FdKind::CharDevice => {
                    let g = match groups.iter().find(|g| g.0 == (lk, lfd)) {
                        Some(g) => g.1,
                        None => {
                            out.opened.push(OpenSpec {
                                path: lrec.path.clone(),
                                flags: lrec.flags,
                                size: lrec.size,
                                offset: lrec.offset,
                                truncate: lrec.kind == FdKind::Regular
                                    && lrec.flags & libc::O_ACCMODE != libc::O_RDONLY
                                    && !lrec.shared,
                                at_end: lrec.kind == FdKind::Regular
                                    && lrec.flags & libc::O_ACCMODE != libc::O_RDONLY
                                    && lrec.shared,
                            });
                            groups.push(((lk, lfd), out.opened.len() - 1));
                            out.opened.len() - 1
                        }
                    };
                    FdSource::Opened(g)
                }
                // Each process restores its own (/dev/null, closed, its own /proc entry).
                _ => continue,
            };
            given.push((f.fd, source));
        }
        out.per_process.push(given);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::FdRecord;

    fn fd(fd: i32, kind: FdKind, path: &str, flags: i32) -> FdRecord {
        FdRecord {
            fd,
            kind,
            path: path.as_bytes().to_vec(),
            flags,
            cloexec: false,
            offset: 10,
            size: 20,
            identity: None,
            shared: false,
            dup_of: None,
        }
    }

    fn process(pid: i32, fds: Vec<FdRecord>) -> ProcessImage {
        let mut image = crate::tests::image();
        image.pid = pid;
        image.fds = fds;
        image
    }

    #[test]
    fn pipe_inodes_parse_and_junk_does_not() {
        assert_eq!(pipe_inode(b"pipe:[123]"), Some(123));
        assert_eq!(pipe_inode(b"pipe:[x]"), None);
        assert_eq!(pipe_inode(b"/tmp/pipe:[1]"), None);
    }

    #[test]
    fn pipes_are_recreated_taken_from_outside_or_refused() {
        let root = process(
            100,
            vec![
                fd(1, FdKind::TreePipe, "pipe:[5]", libc::O_WRONLY),
                fd(3, FdKind::TreePipe, "pipe:[7]", libc::O_WRONLY),
                fd(9, FdKind::ForeignNull, "pipe:[11]", libc::O_RDONLY),
            ],
        );
        let member = process(
            101,
            vec![
                fd(0, FdKind::TreePipe, "pipe:[7]", libc::O_RDONLY),
                fd(1, FdKind::TreePipe, "pipe:[5]", libc::O_WRONLY),
                fd(9, FdKind::TreePipe, "pipe:[11]", libc::O_RDONLY),
            ],
        );
        let roles = classify_pipes(&[(100, &root), (101, &member)]).unwrap();
        assert_eq!(roles[&5], PipeRole::Outside(1));
        assert_eq!(roles[&7], PipeRole::Recreated);
        assert_eq!(roles[&11], PipeRole::Foreign);
        // A member's pipe whose other end is held by nobody in the tree.
        let stray = process(102, vec![fd(4, FdKind::TreePipe, "pipe:[13]", libc::O_WRONLY)]);
        let alone = process(100, vec![fd(1, FdKind::TreePipe, "pipe:[5]", libc::O_WRONLY)]);
        let e = classify_pipes(&[(100, &alone), (102, &stray)]).unwrap_err();
        assert!(e.contains("pipe 13") && e.contains("outside the checkpointed tree"), "{e}");
    }

    #[test]
    fn a_file_shared_down_the_tree_is_opened_once_for_every_holder() {
        let mut out = fd(1, FdKind::Regular, "/job/out.txt", libc::O_WRONLY | libc::O_APPEND);
        out.dup_of = None;
        let mut err = out.clone();
        err.fd = 2;
        err.dup_of = Some(1);
        let root = process(100, vec![out.clone(), err.clone()]);
        let shell = process(101, vec![out.clone(), err.clone(), fd(5, FdKind::TreePipe, "pipe:[8]", libc::O_WRONLY)]);
        let awk = process(102, vec![fd(0, FdKind::TreePipe, "pipe:[8]", libc::O_RDONLY), out, err]);
        let none = PipeContents::default();
        let bytes = PipeContents { pipes: vec![(8, 65536, b"unread".to_vec())] };
        let processes = [
            TreeProcess { pid: 100, ppid: 0, image: &root, pipes: &none },
            TreeProcess { pid: 101, ppid: 100, image: &shell, pipes: &none },
            TreeProcess { pid: 102, ppid: 101, image: &awk, pipes: &bytes },
        ];
        let inherited =
            [InheritedFd { pid: 101, fd: 1 }, InheritedFd { pid: 101, fd: 2 }, InheritedFd { pid: 102, fd: 1 }];
        let plan = plan_fds(&processes, &inherited).unwrap();
        assert_eq!(plan.opened.len(), 1, "{plan:?}");
        assert!(plan.opened[0].truncate && plan.opened[0].path == b"/job/out.txt");
        // Root, shell and awk all get the one description on fd 1 (fd 2 follows as a dup in each).
        for k in 0..3 {
            assert!(plan.per_process[k].contains(&(1, FdSource::Opened(0))), "{k}: {:?}", plan.per_process[k]);
        }
        assert_eq!(plan.pipes.len(), 1);
        assert_eq!(plan.pipes[0].bytes, b"unread");
        assert!(plan.per_process[1].contains(&(5, FdSource::PipeWrite(8))));
        assert!(plan.per_process[2].contains(&(0, FdSource::PipeRead(8))));
    }
}

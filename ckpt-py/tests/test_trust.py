"""The ownership check: files other users could have written are not unpickled unless trusted=True."""

from __future__ import annotations

import os
import pwd
import stat
import sys

import pytest

import ckpt
from ckpt import _ckpt
from conftest import APP

NOBODY = 65534
#: The second user of the multi-user tests (CI creates it: useradd -M -r ckpt-other).
OTHER_USER = "ckpt-other"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")


class Marker:
    """Unpickling this runs code (a stand-in for a malicious payload): it records that it ran."""

    ran = False

    def __reduce__(self):
        return (_mark, ())


def _mark():
    Marker.ran = True
    return "payload ran"


@as_root
def test_file_of_another_user_is_refused(tmp_path):
    ckpt.save({"evil": Marker()}, "s.ckpt")
    os.chown("s.ckpt", NOBODY, NOBODY)
    Marker.ran = False
    with pytest.raises(ckpt.UntrustedCheckpointError) as e:
        ckpt.load("s.ckpt")
    msg = str(e.value)
    assert str(tmp_path / "s.ckpt") in msg or "s.ckpt" in msg
    assert f"uid {NOBODY}" in msg and "trusted=True" in msg
    assert e.value.path == "s.ckpt" and isinstance(e.value, ckpt.CheckpointError)
    assert not Marker.ran, "nothing was unpickled"
    assert ckpt.load("s.ckpt", trusted=True) == {"evil": "payload ran"}
    assert Marker.ran


def other_user() -> int:
    """The uid of the second user, ``ckpt-other``, whose files restart must skip.

    Skips the test (the reason is printed in the summary) when not root or when the user is missing,
    except under CI (``CI=true``), which creates the user and must run the test.
    """
    if os.geteuid() != 0:
        reason = "needs root to give a file to another user"
    else:
        try:
            return pwd.getpwnam(OTHER_USER).pw_uid
        except KeyError:
            reason = f"no user {OTHER_USER} (useradd -M -r {OTHER_USER})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must run this test, but: {reason}")
    print(f"skipped: {reason}", file=sys.stderr)
    pytest.skip(reason)


def test_discovery_skips_another_users_newest_generation(tmp_path, monkeypatch, capfd):
    other = other_user()
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    ckpt.save({"step": 1})
    ckpt.save({"step": 2, "evil": Marker()})
    newest = tmp_path / "c" / f"{APP}.ckpt.2"
    os.chown(newest, other, -1)  # and <APP>.ckpt, a hard link to it
    capfd.readouterr()
    Marker.ran = False
    assert ckpt.load() == {"step": 1}, "the older generation, which is this user's"
    err = capfd.readouterr().err
    assert f"skipped {newest}: refusing to load it: it is owned by uid {other}" in err, err
    with ckpt.Checkpointer(signals=()) as cp:
        assert cp.restore(default="fresh") == {"step": 1}
        info = cp.restored
        assert info.generation == 1 and info.path == tmp_path / "c" / f"{APP}.ckpt.1"
        assert info.rejected == (), "another user's files are skipped, not damaged"
        skipped = [n for n in info.notices if n.startswith("skipped ")]
        assert {n.split(":")[0] for n in skipped} == {f"skipped {newest}", f"skipped {tmp_path / 'c' / APP}.ckpt"}
        assert all(f"owned by uid {other}" in n for n in skipped), info.notices
        assert cp.restore_notices == info.notices
        # trusted=True concerns unpickling a file that was loaded; discovery still skips the file.
        assert cp.restore(trusted=True) == {"step": 1}
    assert not Marker.ran
    log = (tmp_path / "c" / f"{APP}.ckpt.log").read_text()
    assert f"skipped {newest}" in log, "the notices are in the log too"
    # Loaded by its path, the file is refused unless trusted.
    with pytest.raises(ckpt.UntrustedCheckpointError, match=f"uid {other}"):
        ckpt.load(newest)
    assert ckpt.load(newest, trusted=True)["step"] == 2 and Marker.ran


def test_discovery_starts_fresh_when_every_file_is_another_users(tmp_path, monkeypatch, capfd):
    other = other_user()
    monkeypatch.setenv("CKPT_DIR", str(tmp_path / "c"))
    ckpt.save({"step": 1})
    for f in os.listdir(tmp_path / "c"):
        os.chown(tmp_path / "c" / f, other, -1)
    capfd.readouterr()
    assert ckpt.load(default="fresh") == "fresh"
    assert f"owned by uid {other}" in capfd.readouterr().err
    with ckpt.Checkpointer(signals=()) as cp:
        assert cp.restore(default="fresh") == "fresh" and cp.restored is None
        assert cp.restore_notices and all(f"owned by uid {other}" in n for n in cp.restore_notices)


def test_the_rules_are_the_cores(tmp_path):
    """ckpt._trust asks ckpt-core (one policy for every face), with the owner of the descriptor read."""
    ckpt.save([1], "s.ckpt")
    me = os.geteuid()
    assert _ckpt.trust_problems(str(tmp_path / "s.ckpt"), me, 0o100600) == []
    assert "not by you" in _ckpt.trust_problems(str(tmp_path / "s.ckpt"), me + 1, 0o100600)[0]
    # The core's wording, with the mode.
    assert _ckpt.trust_problems(str(tmp_path / "s.ckpt"), me, 0o100666) == ["every user can write it (mode 666)"]
    _, _, info = _ckpt.load_file("s.ckpt")
    st = os.stat("s.ckpt")
    assert info["owner"] == (st.st_uid, st.st_mode, st.st_dev, st.st_ino)


def test_a_file_replaced_while_it_is_read_is_refused(tmp_path, monkeypatch):
    ckpt.save({"x": 1}, "s.ckpt")
    ckpt.save({"x": 2}, "t.ckpt")
    real = _ckpt.load_file

    def load_then_replace(path, **kw):
        out = real(path, **kw)
        os.rename("t.ckpt", path)  # another file of this user, renamed over the one just read
        return out

    monkeypatch.setattr(_ckpt, "load_file", load_then_replace)
    with pytest.raises(ckpt.UntrustedCheckpointError, match="replaced while it was being read"):
        ckpt.load("s.ckpt")


def test_world_writable_directory_without_sticky_bit(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    ckpt.save([1], d / "s.ckpt")
    os.chmod(d, 0o777)
    with pytest.raises(ckpt.UntrustedCheckpointError, match="no sticky bit"):
        ckpt.load(d / "s.ckpt")
    assert ckpt.load(d / "s.ckpt", trusted=True) == [1]
    os.chmod(d, 0o777 | stat.S_ISVTX)  # like /tmp: others cannot replace our files
    assert ckpt.load(d / "s.ckpt") == [1]
    os.chmod(d, 0o775)  # group-writable: the group is trusted
    assert ckpt.load(d / "s.ckpt") == [1]


def test_world_writable_file(tmp_path):
    ckpt.save([2], "s.ckpt")
    os.chmod("s.ckpt", 0o666)
    with pytest.raises(ckpt.UntrustedCheckpointError, match=r"every user can write it \(mode 666\)"):
        ckpt.load("s.ckpt")
    os.chmod("s.ckpt", 0o600)
    assert ckpt.load("s.ckpt") == [2]


def test_own_files_load(tmp_path):
    ckpt.save({"x": 1}, "s.ckpt")
    assert os.stat("s.ckpt").st_uid == os.geteuid()
    assert ckpt.load("s.ckpt") == {"x": 1}


# -- symbolic links (issue 18) ----------------------------------------------------------------------------


def test_own_latest_symlink_is_followed(tmp_path):
    ckpt.save({"step": 7}, "run.7.ckpt")
    os.symlink("run.7.ckpt", "latest.ckpt")
    assert ckpt.load("latest.ckpt") == {"step": 7}
    os.symlink("latest.ckpt", "chain.ckpt")  # a chain of own links
    assert ckpt.load("chain.ckpt") == {"step": 7}


def test_dangling_symlink_is_file_not_found(tmp_path):
    os.symlink("gone.ckpt", "latest.ckpt")
    with pytest.raises(FileNotFoundError):
        ckpt.load("latest.ckpt")
    assert ckpt.load("latest.ckpt", default="d") == "d"


def test_symlink_of_another_user_is_refused(tmp_path):
    other = other_user()
    ckpt.save({"step": 1, "evil": Marker()}, "old.ckpt")  # a file of ours that someone wants us to load
    os.symlink("old.ckpt", "latest.ckpt")
    os.lchown("latest.ckpt", other, -1)
    Marker.ran = False
    with pytest.raises(ckpt.UntrustedCheckpointError) as e:
        ckpt.load("latest.ckpt")
    assert "symbolic link" in str(e.value) and f"uid {other}" in str(e.value), str(e.value)
    assert not Marker.ran
    assert ckpt.load("old.ckpt")["step"] == 1, "the file itself is ours and loads by its own path"
    Marker.ran = False
    assert ckpt.load("latest.ckpt", trusted=True)["step"] == 1


def test_symlink_in_a_directory_anyone_can_rewrite_is_refused(tmp_path):
    ckpt.save({"step": 3}, "data.ckpt")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.symlink(tmp_path / "data.ckpt", shared / "latest.ckpt")
    os.chmod(shared, 0o777)  # anyone can replace the link (no sticky bit)
    with pytest.raises(ckpt.UntrustedCheckpointError) as e:
        ckpt.load(shared / "latest.ckpt")
    assert "no sticky bit" in str(e.value)
    os.chmod(shared, 0o1777)  # sticky: only the owner of the link can replace it
    assert ckpt.load(shared / "latest.ckpt") == {"step": 3}


def test_symlink_to_a_file_in_a_directory_anyone_can_rewrite_is_refused(tmp_path):
    target_dir = tmp_path / "open"
    target_dir.mkdir()
    ckpt.save({"step": 4}, target_dir / "x.ckpt")
    os.chmod(target_dir, 0o777)
    os.symlink(target_dir / "x.ckpt", "latest.ckpt")
    with pytest.raises(ckpt.UntrustedCheckpointError) as e:
        ckpt.load("latest.ckpt")
    assert str(target_dir) in str(e.value), "the file is judged in its own directory, not the link's"

"""Random operation sequences applied to the mount and to a plain local directory side
by side; after every step both trees must hold the same names, kinds and bytes. At the
end the server's copy (a fresh mount with an empty cache) must match too."""

from __future__ import annotations


import os
import shutil
import uuid
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, rule

from tests.harness import cloudfs_mount

NAMES = st.sampled_from(["a", "b", "c", "dir", "x.txt", "ünï", "long-" + "n" * 40])
DATA = st.binary(min_size=0, max_size=300_000)
OFFSETS = st.integers(min_value=0, max_value=400_000)


def snapshot(root: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.join(rel, d)] = "dir"
        for f in filenames:
            path = os.path.join(dirpath, f)
            out[os.path.join(rel, f)] = ("link", os.readlink(path)) if os.path.islink(path) else Path(path).read_bytes()
    return out


def outcome(fn, *args):  # noqa: ANN001, ANN201
    """Run an os call; return its errno (or None) so both sides can be compared."""
    try:
        fn(*args)
        return None
    except OSError as exc:
        return exc.errno


class DriveVsLocal(RuleBasedStateMachine):
    mount_root: Path
    local_root: Path
    history: dict[str, list[str]] = {}

    paths = Bundle("paths")

    def __init__(self) -> None:
        super().__init__()
        run = uuid.uuid4().hex[:8]
        self.m = self.mount_root / run
        self.l = self.local_root / run
        self.m.mkdir()
        self.l.mkdir()
        self.log = self.history.setdefault(run, [])

    def both(self, fn, rel: str, *args) -> int | None:  # noqa: ANN001
        self.log.append(f"{fn.__name__}({rel!r}, {', '.join(repr(a)[:40] for a in args)})")
        got = outcome(fn, self.m / rel, *args)
        want = outcome(fn, self.l / rel, *args)
        assert got == want, f"{fn.__name__}({rel!r}): mount errno {got}, local errno {want}"
        return got

    def both_paths(self, fn, src: str, dst: str) -> int | None:  # noqa: ANN001
        self.log.append(f"{fn.__name__}({src!r}, {dst!r})")
        got = outcome(fn, self.m / src, self.m / dst)
        want = outcome(fn, self.l / src, self.l / dst)
        assert got == want, f"{fn.__name__}({src!r}, {dst!r}): mount errno {got}, local errno {want}"
        return got

    @rule(target=paths, name=NAMES, parent=st.sampled_from(["", "dir", "dir/sub"]))
    def make_path(self, name: str, parent: str) -> str:
        return os.path.join(parent, name) if parent else name

    @rule(path=paths, data=DATA)
    def write_file(self, path: str, data: bytes) -> None:
        def write(p: Path, d: bytes) -> None:
            with open(p, "wb") as f:
                f.write(d)
        self.both(write, path, data)

    @rule(path=paths, offset=OFFSETS, data=DATA)
    def write_at(self, path: str, offset: int, data: bytes) -> None:
        def pwrite(p: Path, off: int, d: bytes) -> None:
            fd = os.open(p, os.O_WRONLY)
            try:
                os.pwrite(fd, d, off)
            finally:
                os.close(fd)
        self.both(pwrite, path, offset, data)

    @rule(path=paths, data=st.binary(max_size=5000))
    def append(self, path: str, data: bytes) -> None:
        def app(p: Path, d: bytes) -> None:
            with open(p, "ab") as f:
                f.write(d)
        self.both(app, path, data)

    @rule(path=paths, size=OFFSETS)
    def truncate(self, path: str, size: int) -> None:
        self.both(os.truncate, path, size)

    @rule(path=paths)
    def mkdir(self, path: str) -> None:
        self.both(os.mkdir, path)

    @rule(path=paths)
    def unlink(self, path: str) -> None:
        self.both(os.unlink, path)

    @rule(path=paths)
    def rmdir(self, path: str) -> None:
        self.both(os.rmdir, path)

    @rule(src=paths, dst=paths)
    def rename(self, src: str, dst: str) -> None:
        self.both_paths(os.rename, src, dst)

    @rule(path=paths, link_to=st.sampled_from(["a", "../x", "dir/sub/c"]))
    def symlink(self, path: str, link_to: str) -> None:
        def make_link(p: Path, to: str) -> None:
            os.symlink(to, p)
        self.both(make_link, path, link_to)

    @rule(path=consumes(paths), offset=OFFSETS, size=st.integers(0, 200_000))
    def read_range(self, path: str, offset: int, size: int) -> None:
        def read(p: Path) -> bytes:
            with open(p, "rb") as f:
                f.seek(offset)
                return f.read(size)
        try:
            want = read(self.l / path)
        except OSError as exc:
            assert outcome(read, self.m / path) == exc.errno
            return
        assert read(self.m / path) == want

    @invariant()
    def same_tree(self) -> None:
        assert snapshot(self.m) == snapshot(self.l)


def test_mount_behaves_like_a_local_directory(fuse_server, account, tmp_path):
    local = tmp_path / "local"
    local.mkdir()
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "cache") as m:
        DriveVsLocal.mount_root = m.path
        DriveVsLocal.local_root = local
        # Deterministic in CI (the same 15 programs every run); CLOUDFS_HYPOTHESIS_EXAMPLES=N
        # explores N random ones instead, for hunting bugs by hand.
        explore = int(os.environ.get("CLOUDFS_HYPOTHESIS_EXAMPLES", "0"))
        runner = settings(max_examples=explore or 15, stateful_step_count=30, deadline=None, derandomize=not explore,
                          suppress_health_check=list(HealthCheck))(DriveVsLocal).TestCase
        runner().runTest()
        m.sync()
        assert "Traceback" not in m.log(), m.log()[-5000:]
    with cloudfs_mount(fuse_server, account, tmp_path / "mnt", tmp_path / "fresh") as m:
        server_side, local_side = snapshot(m.path), snapshot(local)
        differing = sorted({k.split("/")[0] for k in set(server_side) ^ set(local_side)}
                           | {k.split("/")[0] for k in server_side if server_side[k] != local_side.get(k)})
        assert not differing, "the server's copy differs after these operations:\n" + "\n\n".join(
            f"{run}: " + "; ".join(DriveVsLocal.history.get(run.removeprefix("./"), [])) for run in differing[:3])
    shutil.rmtree(local)


"""The drive starts with the machine (issue 14): the systemd user unit `cloudfs service
install` writes (checked by systemd-analyze, and run the way systemd runs it: its
ExecStart with a NOTIFY_SOCKET, stopped by SIGTERM), and an /etc/fstab line mounted by
mount(8) through the `mount.fuse.cloudfs` helper, in a private mount namespace."""

from __future__ import annotations

import shlex
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from tests.cli.conftest import cleanup_mount
from tests.harness import BIN, is_mounted, wait_until

FAILED = 1


@pytest.fixture
def signed_in(cli, server, tmp_path):  # noqa: ANN001, ANN201
    env = {"XDG_CONFIG_HOME": str(tmp_path / "config")}
    cli.ok("login", server.url, "--token", server.add_user(f"svc-{tmp_path.name[-12:]}"), env=env)
    return env


def test_service_install_writes_a_unit_that_mounts_and_stops_cleanly(cli, server, signed_in, tmp_path):
    env = signed_in
    mnt = tmp_path / "my drive"
    cli.fails("service", "install", mnt, cause=[str(mnt), "mkdir -p"], code=FAILED, env=env)
    mnt.mkdir()
    done = cli.ok("service", "install", mnt, env=env)
    unit = next((tmp_path / "config" / "systemd" / "user").glob("cloudfs-*.service"))
    assert unit.name.endswith("my\\x20drive.service") and unit.name in done.stdout
    text = unit.read_text()
    assert "Type=notify" in text and "WantedBy=default.target" in text and "Restart=on-failure" in text
    assert "cfs_" not in text  # the token stays in credentials.toml
    if shutil.which("systemd-analyze"):
        check = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                               env={**cli.env, **env})
        assert check.returncode == 0, check.stdout + check.stderr
        assert str(unit) not in check.stderr, check.stderr  # no warning about our file
    exec_start = next(line for line in text.splitlines() if line.startswith("ExecStart="))[len("ExecStart="):]
    argv = shlex.split(exec_start.replace("%%", "%"))
    assert Path(argv[0]).parent == BIN and argv[-1] == "--foreground" and str(mnt) in argv
    # Run it as systemd would, and stop it as `systemctl --user stop` does.
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener, cleanup_mount(mnt, tmp_path / "unused"):
        listener.bind(str(notify))
        listener.settimeout(60)
        with open(tmp_path / "unit.log", "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=log, env={**cli.env, **env, "NOTIFY_SOCKET": str(notify)})
        try:
            assert listener.recv(256) == b"READY=1", (tmp_path / "unit.log").read_text()
            assert is_mounted(mnt)
            (mnt / "from the unit.txt").write_text("mounted by the unit\n")
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, (tmp_path / "unit.log").read_text()
            assert not is_mounted(mnt), "SIGTERM left the mount behind"
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    done = cli.ok("service", "uninstall", mnt, env=env)
    assert not unit.exists() and "removed" in done.stdout
    cli.fails("service", "uninstall", mnt, cause=["no cloudfs service", str(mnt)], code=FAILED, env=env)


def test_an_fstab_line_mounts_through_the_helper(cli, server, signed_in, tmp_path):
    """`mount MOUNTPOINT` with the line in /etc/fstab, in a mount namespace of its own
    where /etc/fstab is ours and the helper is in /usr/sbin (an overlay): nothing of
    the machine's changes."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1)")
    helper = BIN / "mount.fuse.cloudfs"
    assert helper.exists(), "pip install -e . puts mount.fuse.cloudfs beside cloudfs"
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    helpers = tmp_path / "sbin"
    helpers.mkdir()
    (helpers / "mount.fuse.cloudfs").symlink_to(helper)
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# a drive mounted at boot\n{server.url} {mnt} fuse.cloudfs "
                     f"_netdev,nofail,x-systemd.automount,cache={cache},cache_size=64M,device=fstab-box 0 0\n")
    script = f"""
set -e
mount -t overlay overlay -o lowerdir={helpers}:/usr/sbin /usr/sbin
mount --bind {fstab} /etc/fstab
mount {mnt}
grep -q " {mnt} fuse.cloudfs " /proc/self/mounts
echo "through fstab" > {mnt}/hello.txt
{BIN}/cloudfs sync {mnt}
{BIN}/cloudfs status {mnt} --json > {tmp_path}/status.json
cat {mnt}/hello.txt
umount {mnt}
"""
    env = {**cli.env, **signed_in}
    env.pop("CLOUDFS_TOKEN", None)
    with cleanup_mount(mnt, cache):
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "bash", "-c", script],
                              capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0, done.stdout + done.stderr + _log(cache)
        assert done.stdout.strip() == "through fstab"
        assert '"cache_limit": 67108864' in (tmp_path / "status.json").read_text()
        pid_gone = wait_until(lambda: not _mount_alive(cache), timeout=30, what="the mount process ends")
        assert pid_gone
    assert not is_mounted(mnt)
    # The drive has the file: seen from a mount in this namespace.
    with cleanup_mount(mnt, cache):
        cli.ok("mount", mnt, "--cache", cache, env=env)
        assert (mnt / "hello.txt").read_text() == "through fstab\n"
        cli.ok("umount", mnt, env=env)


def test_the_helper_refuses_what_it_cannot_do(cli, tmp_path):
    helper = str(BIN / "mount.fuse.cloudfs")
    for args, cause in ((["http://127.0.0.1:1", str(tmp_path), "-o", "ro"], "read-only"),
                        (["http://127.0.0.1:1", str(tmp_path), "-o", "rw,colour=blue"], "unknown option 'colour=blue'"),
                        (["http://127.0.0.1:1"], "usage")):
        done = subprocess.run([helper, *args], capture_output=True, text=True, timeout=60, env=cli.env)
        assert done.returncode != 0 and cause in done.stderr and len(done.stderr.strip().splitlines()) == 1, done
    done = subprocess.run([helper, "http://127.0.0.1:1", str(tmp_path), "-f", "-o", "rw,nofail"],
                          capture_output=True, text=True, timeout=60, env=cli.env)
    assert done.returncode == 0 and done.stderr == ""  # -f: pretend


def _mount_alive(cache: Path) -> bool:
    from tests.cli.conftest import alive, mount_pid

    pid = mount_pid(cache)
    return pid is not None and alive(pid)


def _log(cache: Path) -> str:
    out = ""
    for name in ("mount.log", "mount-stderr.log"):
        if (cache / name).exists():
            out += f"\n--- {name}\n" + (cache / name).read_text()[-3000:]
    return out


"""Everyday use of the `cloudfs` command (issue 14): sign in once, then mount with
nothing else; progress bars on a terminal and quiet pipes; one-line refusals of paths
outside the drive; the background mount's log rotates."""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import stat
import time
from pathlib import Path

from tests.cli.conftest import cleanup_mount
from tests.harness import CLOUDFS, free_port

FAILED, USAGE = 1, 2


def under_pty(args: list[str], env: dict[str, str], *, answer: tuple[str, str] | None = None,
              timeout: float = 120) -> tuple[int, str]:
    """Run `cloudfs ARGS` on a pseudo-terminal (as a user at a terminal would); its exit
    code and everything it wrote. `answer` = (prompt, reply) types a reply once the
    prompt appears."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: nothing here may return into pytest
        try:
            os.execve(CLOUDFS[0], [*CLOUDFS, *args], {**env, "TERM": "xterm-256color", "COLUMNS": "120"})
        finally:
            os._exit(127)
    output = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    break  # EIO: the child closed the terminal
                if not data:
                    break
                output += data
                if answer and answer[0].encode() in output:
                    os.write(fd, answer[1].encode() + b"\n")
                    answer = None
    finally:
        if time.monotonic() >= deadline:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace")


def private_env(cli, tmp_path: Path) -> dict[str, str]:  # noqa: ANN001
    return {"XDG_CONFIG_HOME": str(tmp_path / "config")}


def test_login_then_mount_with_nothing_else(cli, server, tmp_path):
    env = private_env(cli, tmp_path)
    token = server.add_user("daily-login")
    credentials = tmp_path / "config" / "cloudfs" / "credentials.toml"
    cli.fails("login", server.url, "--token", "cfs_wrong", cause=[server.url, "refused the token", "401"],
              code=FAILED, env=env)
    url = f"http://127.0.0.1:{free_port()}"
    cli.fails("login", url, "--token", token, cause=[f"nothing answers at {url}", "connection refused"],
              code=FAILED, env=env)
    cli.fails("login", server.url, cause=["no token", "--token"], code=USAGE, env=env)  # stdin is no terminal
    assert not credentials.exists()  # nothing saved by a refusal
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    cli.fails("mount", mnt, cause=["no server", "cloudfs login"], code=USAGE, env=env)
    done = cli.ok("login", server.url, "--token", token, env=env)
    assert "logged in" in done.stdout and "daily-login" in done.stdout
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert stat.S_IMODE(credentials.parent.stat().st_mode) == 0o700
    (tmp_path / "config" / "cloudfs" / "config.toml").write_text(
        f'[defaults]\ncache_size = "96M"\n\n[mounts."{mnt}"]\ncache = "{cache}"\ndevice = "from-config"\n')
    with cleanup_mount(mnt, cache):
        cli.ok("mount", mnt, env=env, drop=("CLOUDFS_TOKEN",))  # no URL, no token
        (mnt / "hello.txt").write_text("signed in once\n")
        cli.ok("sync", mnt, env=env)
        status = json.loads(cli.ok("status", mnt, "--json", env=env).stdout)
        assert status["server_url"] == server.url and status["cache_limit"] == 96 << 20
        versions = cli.ok("versions", mnt / "hello.txt", "--json", env=env).stdout
        assert "from-config" in versions
        # Paths that are not on the drive: one line, exit 1, nothing changed.
        for verb in ("pin", "unpin", "ls"):
            cli.fails(verb, tmp_path, cause=[str(tmp_path), "not on a mounted cloudfs drive"], code=FAILED, env=env)
        cli.fails("pin", mnt / "hello.txt", mnt / "nothere", cause=[str(mnt / "nothere"), "not on the drive"],
                  code=FAILED, env=env)
        cli.fails("unpin", mnt / "hello.txt", cause=[str(mnt / "hello.txt"), "not pinned"], code=FAILED, env=env)
        assert json.loads(cli.ok("status", mnt, "--json", env=env).stdout)["pins"] == []
        cli.ok("umount", mnt, env=env)
    assert "logged out" in cli.ok("logout", env=env).stdout
    assert not credentials.exists()
    cli.fails("logout", cause=["not logged in"], code=FAILED, env=env)
    cli.fails("mount", mnt, cause=["no server", "cloudfs login"], code=USAGE, env=env)  # logged out: nothing left


def test_login_asks_for_the_token_on_a_terminal(cli, server, tmp_path):
    env = {**cli.env, **private_env(cli, tmp_path)}
    token = server.add_user("daily-prompt")
    code, out = under_pty(["login", server.url], env, answer=("token for", token))
    assert code == 0, out
    assert "logged in" in out and token not in out  # not echoed
    assert token in (tmp_path / "config" / "cloudfs" / "credentials.toml").read_text()


def test_progress_bars_on_a_terminal_and_quiet_pipes(cli, server, tmp_path):
    env = {**cli.env, **private_env(cli, tmp_path), "CLOUDFS_TOKEN": server.add_user("daily-bars")}
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    with cleanup_mount(mnt, cache):
        cli.ok("mount", server.url, mnt, "--cache", cache, env=env)
        (mnt / "big.bin").write_bytes(os.urandom(24 << 20))
        code, out = under_pty(["sync", str(mnt)], env)
        assert code == 0, out
        assert "sync" in out and "━" in out and "\x1b[" in out, out  # a rich bar, drawn with escapes
        (mnt / "more.bin").write_bytes(os.urandom(4 << 20))
        piped = cli.ok("sync", mnt, env=env)
        assert piped.stdout == "" and piped.stderr == ""
        code, out = under_pty(["pin", str(mnt / "big.bin")], env)
        assert code == 0 and "━" in out and "every byte is here" in out, out
        piped = cli.ok("pin", mnt / "more.bin", env=env)
        assert "━" not in piped.stdout and "\x1b" not in piped.stdout and len(piped.stdout.splitlines()) == 1
        code, out = under_pty(["fsck", str(mnt)], env)
        assert code == 0 and "━" in out and "no problem left" in out, out
        assert "━" not in cli.ok("fsck", mnt, env=env).stdout
        cli.ok("umount", mnt, env=env)


def test_the_background_mount_log_rotates(cli, server, tmp_path):
    env = {**private_env(cli, tmp_path), "CLOUDFS_TOKEN": server.add_user("daily-log"),
           "CLOUDFS_LOG_MAX_BYTES": "3000", "CLOUDFS_LOG_LEVEL": "DEBUG"}
    mnt, cache = tmp_path / "mnt", tmp_path / "cache"
    mnt.mkdir()
    with cleanup_mount(mnt, cache):
        cli.ok("mount", server.url, mnt, "--cache", cache, env=env)
        for i in range(30):
            (mnt / f"f{i}.txt").write_text("x" * i)
        cli.ok("sync", mnt, env=env)
        cli.ok("umount", mnt, env=env)
    logs = sorted(p.name for p in cache.glob("mount.log*"))
    assert "mount.log.1" in logs, logs
    assert len(logs) <= 4  # mount.log and three old ones
    for name in logs:
        assert (cache / name).stat().st_size <= 3000 + 1024, name
    assert "cloudfs mounted on" in (cache / "mount-stderr.log").read_text()  # the process's own stderr, kept

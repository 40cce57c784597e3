"""Every mistake a user can make at the command line gets one line naming the cause
and the fix, a non-zero exit and no traceback (issue 19). This module needs no
mount: option values, paths that are not mounts, servers and databases that refuse,
`mount` refused before its process is started, and a bug's one line.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Iterator

import httpx
import pytest

from tests.harness import ServerProcess, free_port, is_mounted, wait_until

USAGE, FAILED, BUG = 2, 1, 3


@pytest.fixture(scope="module")
def token(server: ServerProcess) -> str:
    return server.add_user(f"alice-{uuid.uuid4().hex[:8]}")


@pytest.fixture
def empty_dir(tmp_path: Path) -> Path:
    path = tmp_path / "mnt"
    path.mkdir()
    return path


@contextlib.contextmanager
def process(*args: str) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(list(args), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


# --- option values: exit 2, the option named ------------------------------------------------

@pytest.mark.parametrize(("args", "cause"), [
    (["mount", "notaurl", "{mnt}"], ["'notaurl' is not a server URL", "http://notaurl"]),
    (["mount", "localhost:8470", "{mnt}"], ["not a server URL", "http://localhost:8470"]),
    (["mount", "ftp://127.0.0.1:8470", "{mnt}"], ["ftp://", "http:// or https://"]),
    (["mount", "http://127.0.0.1:99999", "{mnt}"], ["99999", "port"]),
    (["mount", "http://:8470", "{mnt}"], ["no host"]),
    (["mount", "{url}", "{mnt}", "--cache-size", "10Q"], ["--cache-size", "'10Q' is not a size"]),
    (["mount", "{url}", "{mnt}", "--cache-size=-5G"], ["--cache-size", "positive"]),
    (["mount", "{url}", "{mnt}", "--device", "my/laptop"], ["--device", "my/laptop"]),
    (["mount", "{url}"], ["MOUNTPOINT"]),
    (["umount", "{mnt}", "--timeout", "0"], ["--timeout", "positive"]),
    (["sync", "{mnt}", "--timeout", "-1"], ["--timeout", "'-1'"]),
    (["fsck", "{mnt}", "--timeout", "soon"], ["--timeout", "'soon'"]),
    (["status", "{mnt}", "--bogus"], ["--bogus"]),
    (["status"], ["MOUNTPOINT"]),
    (["user", "add", "no/slashes"], ["user name 'no/slashes'"]),
    (["user", "add", "_underscore"], ["user name '_underscore'"]),
    (["user", "add", "carol", "--quota", "10Q"], ["--quota", "10Q"]),
    (["user", "add", "carol", "--quota", "-1"], ["--quota", "'-1'"]),
    (["server", "--port", "70000"], ["--port", "70000"]),
    (["server", "--port", "http"], ["--port", "'http'"]),
    (["server", "--journal-retain", "0"], ["--journal-retain", "at least 1"]),
    (["server", "--journal-retain", "lots"], ["--journal-retain", "'lots'"]),
    (["nosuchverb"], ["nosuchverb"]),
])
def test_bad_option_values_are_usage_errors(cli, server, token, empty_dir, args, cause):
    args = [a.format(url=server.url, mnt=empty_dir) for a in args]
    cli.fails(*args, cause=cause, code=USAGE, env={"CLOUDFS_TOKEN": token})


def test_missing_or_mangled_token(cli, server, empty_dir):
    cli.fails("mount", server.url, empty_dir, cause=["no token", "--token", "CLOUDFS_TOKEN"], code=USAGE)
    cli.fails("mount", server.url, empty_dir, "--token", "cfs_abc def",
              cause=["token in --token", "paste it again"], code=USAGE)


# --- mount: paths, cache and server, refused in the foreground ------------------------------

def test_mount_on_paths_that_cannot_be_mountpoints(cli, server, token, tmp_path):
    env = {"CLOUDFS_TOKEN": token}
    missing = tmp_path / "no" / "such"
    cli.fails("mount", server.url, missing, cause=[str(missing), "does not exist", "mkdir -p"], code=FAILED, env=env)
    afile = tmp_path / "afile"
    afile.write_text("x")
    cli.fails("mount", server.url, afile, cause=[str(afile), "not a directory"], code=FAILED, env=env)
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    cli.fails("mount", server.url, full, cause=[str(full), "not empty", "1 entry", "--allow-non-empty"],
              code=FAILED, env=env)
    cli.fails("mount", server.url, "/proc", cause=["/proc", "already a mount point", "proc"], code=FAILED, env=env)


def test_mount_with_a_cache_dir_that_cannot_be_made(cli, server, token, empty_dir, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    for cache, why in ((afile / "cache", "not a directory"), (afile, "it is a file")):
        cli.fails("mount", server.url, empty_dir, "--cache", cache, cause=[str(cache), why, "--cache"],
                  code=FAILED, env={"CLOUDFS_TOKEN": token})


def test_mount_where_nothing_answers(cli, empty_dir, token, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    cli.fails("mount", url, empty_dir, "--cache", tmp_path / "cache",
              cause=[f"nothing answers at {url}", "connection refused", "first mount needs the server",
                     "cloudfs server"], code=FAILED, env={"CLOUDFS_TOKEN": token})
    assert not is_mounted(empty_dir)


def test_mount_of_something_that_is_not_a_cloudfs_server(cli, empty_dir, token, tmp_path):
    port = free_port()
    with process(sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(tmp_path)):
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url, timeout=1).status_code == 200, timeout=20, what="http.server")
        cli.fails("mount", url, empty_dir, cause=[url, "not as a cloudfs server", "404"], code=FAILED,
                  env={"CLOUDFS_TOKEN": token})


def test_mount_with_https_on_a_plain_http_server(cli, server, token, empty_dir):
    url = server.url.replace("http://", "https://")
    cli.fails("mount", url, empty_dir, cause=[url, "TLS", "http:// or https://"], code=FAILED,
              env={"CLOUDFS_TOKEN": token})


def test_mount_with_a_token_the_server_refuses(cli, server, empty_dir):
    cli.fails("mount", server.url, empty_dir, "--token", "cfs_not-a-real-token",
              cause=[server.url, "refused the token", "401", "--token"], code=FAILED)


# --- status, sync, fsck, umount on what is not a cloudfs mount ------------------------------

@pytest.mark.parametrize("verb", [["status"], ["status", "--json"], ["sync"], ["fsck", "--json"], ["umount"],
                                  ["umount", "--force"]])
def test_control_verbs_on_what_is_not_a_mount(cli, verb, tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    afile = tmp_path / "afile"
    afile.write_text("x")
    missing = tmp_path / "missing"
    cli.fails(verb[0], plain, *verb[1:], cause=[str(plain), "not a cloudfs mount", "nothing is mounted there"],
              code=FAILED)
    cli.fails(verb[0], missing, *verb[1:], cause=[str(missing), "does not exist"], code=FAILED)
    cli.fails(verb[0], afile, *verb[1:], cause=[str(afile), "not a directory"], code=FAILED)
    cli.fails(verb[0], "/proc", *verb[1:], cause=["/proc", "not a cloudfs mount", "proc mount"], code=FAILED)


# --- user add and server ---------------------------------------------------------------------

def test_user_add_that_cannot_be_done(cli, server, tmp_path):
    port = free_port()
    url = f"postgresql://cloudfs:s3cret@127.0.0.1:{port}/cloudfs"
    done = cli.fails("user", "add", "erin", "--db", url,
                     cause=["cannot open the database", f"127.0.0.1:{port}", "refused"], code=FAILED)
    assert "s3cret" not in done.stderr
    cli.fails("user", "add", "erin", "--db", "nonsense://x", cause=["nonsense", "unknown database kind"], code=FAILED)
    afile = tmp_path / "afile"
    afile.write_text("x")
    cli.fails("user", "add", "erin", "--data", afile / "data",
              cause=[str(afile / "data"), "data directory", "--data"], code=FAILED)
    name = f"dup-{uuid.uuid4().hex[:6]}"
    server.add_user(name)
    cli.fails("user", "add", name, "--data", server.data_dir, cause=[name, "already exists"], code=FAILED)


def test_server_that_cannot_start(cli, server, tmp_path):
    port = server.url.rsplit(":", 1)[1]
    data = tmp_path / "data"
    cli.fails("server", "--data", data, "--port", port, cause=[f"port {port}", "already in use", "--port"],
              code=FAILED)
    afile = tmp_path / "afile"
    afile.write_text("x")
    cli.fails("server", "--data", afile, "--port", "0", cause=[str(afile), "data directory", "--data"], code=FAILED)
    cli.fails("server", "--data", afile / "sub", "--port", "0", cause=[str(afile / "sub"), "not a directory"],
              code=FAILED)
    pg_port = free_port()
    cli.fails("server", "--data", data, "--port", "0", "--db", f"postgresql://u:pw@127.0.0.1:{pg_port}/db",
              cause=["cannot open the database", str(pg_port)], code=FAILED)
    cli.fails("server", "--data", data, "--port", "0", "--store", "ftp://x", cause=["--store ftp://x", "scheme"],
              code=FAILED)
    cli.fails("server", "--data", data, "--port", "0", "--host", "192.0.2.1",
              cause=["--host 192.0.2.1", "not an address of this machine"], code=FAILED)


# --- a bug: one line, the error's type and the log --------------------------------------------

PEER = """
import json, socket, sys
from pathlib import Path
from cloudfs.backend.daily import control
path = control.socket_path(Path(sys.argv[1]))
path.unlink(missing_ok=True)
listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
listener.bind(str(path))
listener.listen(4)
print("ready", flush=True)
while True:
    conn, _ = listener.accept()
    with conn:
        conn.recv(65536)
        conn.sendall(b'{"ok": true}\\n')  # a mount of another version: none of the fields status prints
"""


def test_a_bug_is_one_line_with_the_log_unless_debugging(cli, tmp_path):
    where = tmp_path / "mnt"
    where.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", PEER, str(where)], stdout=subprocess.PIPE, text=True,
                            env=cli.env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        done = cli.fails("status", where, cause=["unexpected error KeyError", "a bug", str(cli.log_dir)], code=BUG)
        log = (cli.log_dir / "cloudfs.log").read_text()
        assert "Traceback" in log and "KeyError" in log and "cloudfs status" in log
        assert str(cli.log_dir / "cloudfs.log") in done.stderr
        debug = cli.run("status", where, env={"CLOUDFS_LOG_LEVEL": "DEBUG"})
        assert debug.returncode != 0 and "Traceback" in debug.stderr and "KeyError" in debug.stderr
    finally:
        proc.kill()
        proc.wait(10)

"""Pure pieces of issue 14: the fstab helper's options, systemd's path escaping and
command-line quoting, config.toml's precedence and its mistakes, ignore patterns."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from cloudfs import config, mount_helper, service, validate
from cloudfs.backend.daily.ignore import DEFAULTS, _parse
from cloudfs.errors import UsageError


def test_the_helper_turns_mount_options_into_a_cloudfs_mount():
    argv = ["http://h:1", "/mnt/d", "-o", "rw,_netdev,nofail,x-systemd.automount,cache=/c,cache_size=5G,device=box,"
            "allow_non_empty,delete_guard=7", "-n"]
    assert mount_helper.translate(argv) == ["mount", "http://h:1", "/mnt/d", "--cache", "/c", "--cache-size", "5G",
                                            "--device", "box", "--allow-non-empty", "--delete-guard", "7"]
    assert mount_helper.translate(["cloudfs", "/mnt/d", "-odefaults"]) == ["mount", "/mnt/d"]
    assert mount_helper.translate(["cloudfs", "/mnt/d", "-f"]) is None
    for bad in (["u", "/m", "-o", "ro"], ["u", "/m", "-o", "speed=9"], ["u"], ["u", "/m", "-x"]):
        with pytest.raises(SystemExit):
            mount_helper.translate(bad)


@pytest.mark.parametrize("path", ["/home/alice/cloudfs", "/srv/my drive", "/mnt/été/x-y", "/a/.hidden", "/"])
def test_unit_names_escape_paths_as_systemd_does(path):
    name = service.escape_path(Path(path))
    if shutil.which("systemd-escape"):
        assert name == subprocess.run(["systemd-escape", "--path", path], capture_output=True, text=True).stdout.strip()
    assert "/" not in name and " " not in name


def test_exec_start_words_survive_systemd_quoting():
    words = ["/usr/bin/python3", "-m", "cloudfs", "mount", "http://h:1", "/srv/my drive", "/a/100%", '/q"uote']
    line = " ".join(service._quote(w) for w in words)
    assert shlex.split(line.replace("%%", "%").replace("$$", "$")) == words


def test_config_toml_precedence_and_mistakes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    (tmp_path / "cloudfs").mkdir()
    path = tmp_path / "cloudfs" / "config.toml"
    checks = {"cache_size": validate.size, "device": validate.device}
    assert config.mount_defaults(Path("/m"), checks) == config.MountDefaults()  # no file: nothing
    path.write_text('[defaults]\ncache_size = "1G"\ndevice = "d1"\n[mounts."/m"]\ndevice = "d2"\ncache = "~/c"\n')
    got = config.mount_defaults(Path("/m"), checks)
    assert (got.cache_size, got.device, got.cache) == (1 << 30, "d2", Path("~/c").expanduser())
    assert config.mount_defaults(Path("/other"), checks).device == "d1"
    for text, cause in (('[defaults]\ncolour = "x"\n', "unknown setting 'colour'"),
                        ('[defaults]\ncache_size = "10Q"\n', "cache_size"),
                        ('[default]\n', "unknown section"),
                        ('[defaults\n', "not valid TOML")):
        path.write_text(text)
        with pytest.raises(UsageError, match=cause):
            config.mount_defaults(Path("/m"), checks)


def test_login_credentials_are_private_and_forgotten(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path))
    config.save_login(config.Login("http://a:1/", "tok-a", "alice"))
    config.save_login(config.Login("http://b:2", "tok-b", "bob"))
    path = tmp_path / "cloudfs" / "credentials.toml"
    assert path.stat().st_mode & 0o777 == 0o600
    assert config.load_login().token == "tok-b"  # the last login is the default
    assert config.load_login("http://a:1").token == "tok-a"
    assert config.forget_login(None) == "http://b:2"
    assert config.load_login().server_url == "http://a:1"
    assert config.forget_login("http://b:2") is None
    assert config.forget_login("http://a:1") == "http://a:1" and not path.exists()


def test_ignore_patterns_parse_line_by_line():
    spec, problems = _parse(["*.log", "[z-a]", "!keep.log", "\\"], "/.cloudfsignore")
    assert len(problems) == 2 and "line 2" in problems[0] and "line 4" in problems[1]
    assert spec.check_file("a.log").include is True and spec.check_file("keep.log").include is False
    defaults, none = _parse(list(DEFAULTS), "defaults")
    assert none == []
    for name in (".DS_Store", "Thumbs.db", "x.swp", ".x.swp", "file~", ".#lock", "#auto#", "~$doc.docx",
                 ".~lock.a.odt#", ".Trashes/"):
        assert defaults.check_file(name).include is True, name
    for name in ("notes.txt", "swp", "a#b", ".cloudfsignore"):
        assert defaults.check_file(name).include is not True, name

"""The reference model's books (tests/model.py) on hard links and extended attributes:
each rule must be able to fail, or the model test and the soak would pass anything.
Views are taken of real trees on the local disk (os.link, os.setxattr); the books are
filled as the operations in tests/model_ops.py fill them."""

from __future__ import annotations

import os
from pathlib import Path

from tests.model import Ledger, View, merged, view
from tests.model_ops import NAMES, Actor

C = b"<a#1>first"


def settled(tmp_path: Path, files: dict[str, bytes]) -> tuple[Ledger, Path]:
    """A ledger whose last settle is `files` (made under tmp_path/"settled")."""
    root = tmp_path / "settled"
    root.mkdir(parents=True)
    ledger = Ledger()
    for path, data in files.items():
        (root / path).write_bytes(data)
        ledger.produce("a", b"", data, path)
    ledger.roll(view(root))
    return ledger, root


def tree(tmp_path: Path, name: str, files: dict[str, bytes], links: dict[str, str] | None = None) -> View:
    root = tmp_path / name
    root.mkdir()
    for path, data in files.items():
        (root / path).write_bytes(data)
    for new, existing in (links or {}).items():
        os.link(root / existing, root / new)
    return view(root)


def whats(ledger: Ledger, final: View, before: dict[str, View]) -> list[str]:
    return [what for what, _ in ledger.problems(final, before, NAMES)]


def test_contents_are_counted_per_inode(tmp_path):
    linked = tree(tmp_path, "linked", {"x.txt": C}, {"y": "x.txt"})
    assert linked.contents[C] == 1
    assert linked.linked == {frozenset({"x.txt", "y"})}
    apart = tree(tmp_path, "apart", {"x.txt": C, "y": C})
    assert apart.contents[C] == 2 and not apart.linked
    assert any("names of one file" in line for line in linked.differences(apart, "a", "b"))


def test_a_name_removed_elsewhere_while_this_device_linked_the_file_may_live_on(tmp_path):
    ledger, _ = settled(tmp_path, {"x.txt": C})
    ledger.link("a", C, ["x.txt"])
    ledger.touched("a", "x.txt", "y")
    ledger.destroy("b", C, "x.txt")
    ledger.touched("b", "x.txt")
    final = tree(tmp_path, "final", {"y": C})
    assert "destroyed content came back" not in whats(ledger, final, {"a": final, "b": final})

    unlinked, _ = settled(tmp_path / "2", {"x.txt": C})
    unlinked.destroy("b", C, "x.txt")
    unlinked.touched("b", "x.txt")
    assert "destroyed content came back" in whats(unlinked, final, {"a": final, "b": final})


def test_removing_one_name_of_several_destroys_nothing_for_sure(tmp_path):
    ledger, _ = settled(tmp_path, {"x.txt": C})
    ledger.destroy("b", C, "x.txt", nlink=2)
    ledger.touched("b", "x.txt", "y")
    final = tree(tmp_path, "final", {"y": C})
    assert "destroyed content came back" not in whats(ledger, final, {"a": final, "b": final})


def test_names_linked_on_one_device_must_stay_one_file(tmp_path):
    """a gave x.txt a second name; the settled tree shows the same bytes under both
    names, but as two files: the link was lost, though no other device acted."""
    ledger, root = settled(tmp_path, {"x.txt": C})
    actor = Actor(ledger, {"a": root}, lambda dev, text: None)
    assert actor.run("link", "a", "x.txt", "y").startswith("ok")
    before = {"a": view(root)}
    assert whats(ledger, before["a"], before) == []
    split = tree(tmp_path, "split", {"x.txt": C, "y": C})
    assert split.tree == before["a"].tree  # only the grouping tells them apart
    assert any(w.startswith("where only one device acted") for w in whats(ledger, split, before))


def test_an_extended_attribute_nobody_set_is_invented(tmp_path):
    ledger, _ = settled(tmp_path, {"x.txt": C})
    tree(tmp_path, "final", {"x.txt": C})
    os.setxattr(tmp_path / "final" / "x.txt", "user.k0", b"<b#9>never set")
    assert "content or names nobody made" in whats(ledger, view(tmp_path / "final"), {})


def test_extended_attributes_are_exact_where_one_device_acted(tmp_path):
    ledger, root = settled(tmp_path, {"x.txt": C, "y": b"<a#2>y"})
    actor = Actor(ledger, {"a": root}, lambda dev, text: None)
    assert actor.run("xattr", "a", "x.txt", 0, 20, 1) == "ok"
    before = {"a": view(root)}
    value = before["a"].xattrs["x.txt"]["user.k0"]
    assert whats(ledger, before["a"], before) == []
    os.removexattr(root / "x.txt", "user.k0")  # a's change did not survive the settle
    assert any(w.startswith("where only one device acted") for w in whats(ledger, view(root), before))
    os.setxattr(root / "x.txt", "user.k0", value)
    os.setxattr(root / "y", "user.k0", value)  # y was untouched: it keeps what it had
    assert any(w.startswith("where only one device acted") for w in whats(ledger, view(root), before))


def test_what_another_device_wrote_into_a_file_linked_here_may_live_on(tmp_path):
    """a gave x.txt another name; b, not seeing it, appended to x.txt and removed it.
    The file lives on under a's name with b's bytes in it: b's append is kept by a's
    link, not brought back from the dead."""
    d = b"<b#2>more"
    ledger, _ = settled(tmp_path, {"x.txt": C})
    ledger.link("a", C, ["x.txt"])
    ledger.touched("a", "x.txt", "y")
    ledger.produce("b", C, C + d, "x.txt")
    ledger.destroy("b", C + d, "x.txt")
    ledger.touched("b", "x.txt")
    final = tree(tmp_path, "final", {"y": C + d})
    assert "destroyed content came back" not in whats(ledger, final, {"a": final, "b": final})
    ledger.linked_from.clear()
    assert "destroyed content came back" in whats(ledger, final, {"a": final, "b": final})


def test_a_directory_moved_takes_the_other_names_of_its_files_along(tmp_path):
    """a renames d/e, which holds one name of a file whose other name (d/z.md) is
    outside it: that other name's file moved, so it is a's too (its partner is now
    d/y/x.txt), not an untouched path whose partners must stay as they were."""
    ledger, root = settled(tmp_path, {})
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "e" / "x.txt").write_bytes(C)
    os.link(root / "d" / "e" / "x.txt", root / "d" / "z.md")
    ledger.produce("a", b"", C, "d/e/x.txt")
    ledger.roll(view(root))
    actor = Actor(ledger, {"a": root}, lambda dev, text: None)
    assert actor.run("rename", "a", "d/e", "d/y") == "ok"
    after = view(root)
    assert after.linked == {frozenset({"d/y/x.txt", "d/z.md"})}
    assert whats(ledger, after, {"a": after}) == []


def test_a_view_split_into_parts_counts_each_file_once_per_part(tmp_path):
    """Shared folders (test_model_shared.py): a device's view cut into its own tree and
    the folder, each placed in the compared tree. Contents are counted again per part
    (a file whose names fall in both parts counts in each), names of one file and
    extended attributes go with their paths."""
    root = tmp_path / "whole"
    (root / "s").mkdir(parents=True)
    (root / "s" / "x.txt").write_bytes(C)
    os.link(root / "s" / "x.txt", root / "s" / "z.md")
    os.link(root / "s" / "x.txt", root / "x.txt")
    (root / "y").write_bytes(b"<a#2>y")
    os.setxattr(root / "y", "user.k0", b"<a#3>v")
    whole = view(root)
    assert whole.contents[C] == 1
    folder = whole.mapped(lambda p: p if p == "s" or p.startswith("s/") else None)
    own = whole.mapped(lambda p: None if p == "s" or p.startswith("s/") else f"a:/{p}")
    assert set(folder.tree) == {"s", "s/x.txt", "s/z.md"} and folder.contents == {C: 1}
    assert folder.linked == {frozenset({"s/x.txt", "s/z.md"})} and not folder.xattrs
    assert set(own.tree) == {"a:/x.txt", "a:/y"} and own.contents == {C: 1, b"<a#2>y": 1}
    assert not own.linked and own.xattrs == {"a:/y": {"user.k0": b"<a#3>v"}}
    both = merged(own, folder)
    assert both.contents[C] == 2 and both.linked == folder.linked and set(both.tree) == set(own.tree) | set(folder.tree)


def test_each_account_s_own_tree_is_booked_apart(tmp_path):
    """Two accounts each write their own x.txt (outside the shared folder): with
    `place` these are two paths one device each acted on, so each must come out exactly
    as its device left it; without it they look like one path both devices met on."""
    def place(dev: str, path: str) -> str:
        return path if path.startswith("s/") else f"{dev}:/{path}"

    def book(ledger: Ledger) -> None:
        for dev in "ab":
            ledger.produce(dev, b"", f"<{dev}#1>x".encode(), "x.txt")
            ledger.touched(dev, "x.txt")

    roots = {dev: tmp_path / dev for dev in "ab"}
    for dev, root in roots.items():
        root.mkdir()
        (root / "x.txt").write_bytes(f"<{dev}#1>x".encode())
    before = {dev: view(root).mapped(lambda p, dev=dev: place(dev, p)) for dev, root in roots.items()}
    apart = Ledger(place=place)
    book(apart)
    assert apart.inexact(before, merged(*before.values())) == ([], set())
    wrong, _ = apart.inexact(before, before["b"])  # a's file did not survive the settle
    assert len(wrong) == 1 and wrong[0].startswith("  a:/x.txt: absent, expected <a1:")
    together = Ledger()
    book(together)
    assert together.inexact({dev: view(root) for dev, root in roots.items()}, view(roots["a"]))[1] == {"x.txt"}


def test_a_file_moved_before_its_new_content_reached_the_mover_may_live_on(tmp_path):
    """c wrote x.txt and then removed it; a, seeing it still empty, renamed it to y. The
    file lives on at y with c's bytes (a's move kept it): not brought back from the dead
    (soak, seed 280066). Without a's move it would be."""
    d = b"<c#2>written"
    ledger, _ = settled(tmp_path, {"x.txt": b""})
    ledger.move("a", b"", "x.txt")
    ledger.touched("a", "x.txt", "y")
    ledger.produce("c", b"", d, "x.txt")
    ledger.destroy("c", d, "x.txt")
    ledger.touched("c", "x.txt")
    final = tree(tmp_path, "final", {"y": d})
    assert "destroyed content came back" not in whats(ledger, final, {"a": final, "c": final})

    unmoved, _ = settled(tmp_path / "2", {"x.txt": b""})
    unmoved.produce("c", b"", d, "x.txt")
    unmoved.destroy("c", d, "x.txt")
    unmoved.touched("c", "x.txt")
    assert "destroyed content came back" in whats(unmoved, final, {"a": final, "c": final})


def test_a_file_written_again_with_its_own_bytes_survives_a_change_elsewhere(tmp_path):
    """b truncates x.txt to its own size (a new version with the same bytes) while a
    truncates it longer: the drive keeps b's version and a's as a conflicted copy. The
    books took b's write for a destroy and a write of the same bytes, and a's change for
    the destroy that left them nowhere: "destroyed content came back" (model test, 80
    examples). Without b's write, C coming back is still caught."""
    W = b"<a#2>first\0\0\0"
    final = tree(tmp_path, "final", {"x.txt": C, "x (conflicted copy, dev-a).txt": W})
    ledger, _ = settled(tmp_path, {"x.txt": C})
    ledger.produce("b", C, C, "x.txt")
    ledger.produce("a", C, W, "x.txt")
    ledger.touched("a", "x.txt")
    ledger.touched("b", "x.txt")
    assert "destroyed content came back" not in whats(ledger, final, {"a": final, "b": final})
    alone, _ = settled(tmp_path / "alone", {"x.txt": C})
    alone.produce("a", C, W, "x.txt")
    alone.touched("a", "x.txt")
    assert "destroyed content came back" in whats(alone, final, {"a": final, "b": final})

"""`cloudfs fsck`: check this device's cache and the server's copy of the account,
repair what can be repaired, report the rest.

Device side: every cached chunk must match its checksum and its fingerprint (a bad one
is dropped and fetched again when needed), and so must the blocks of every settled
file (`Cache.settle`), chunk by chunk against its version's list; every file with local
changes must have an upload queued (one is queued if not); dirty blocks must belong to
a file. Server side:
the server reads every chunk of every live file back from the store; a bad one this
device still has intact in its cache is uploaded again, which replaces it. What cannot
be repaired is listed with the files it affects, and fsck exits non-zero.
"""

from __future__ import annotations

import logging
from typing import Any

import trio

from ..protocol import wire
from ..session import Session
from .cache import ROOT_INO, Cache

log = logging.getLogger("cloudfs.fsck")


async def run_fsck(session: Session) -> dict[str, Any]:
    problems: list[str] = []
    repaired: list[str] = []
    try:
        device = await _check_device(session, problems, repaired)
        session.fsck_progress = {"phase": "the server reads back every chunk", "done": 0, "total": None}
        server = await _check_server(session, problems, repaired)
    finally:
        session.fsck_progress = None
    for line in repaired:
        log.warning("fsck repaired: %s", line)
    for line in problems:
        log.error("fsck problem: %s", line)
    return {"ok": not problems, "device": device, "server": server, "problems": problems, "repaired": repaired}


async def _check_device(session: Session, problems: list[str], repaired: list[str]) -> dict[str, int]:
    cache, chunks = session.cache, session.chunks
    checked = dropped = 0
    keys = chunks.keys()
    session.fsck_progress = {"phase": "cached chunks", "done": 0, "total": len(keys)}
    for i, fp in enumerate(keys):
        checked += 1
        session.fsck_progress["done"] = checked
        if not chunks.verify_entry(fp):
            dropped += 1
            repaired.append(f"cached chunk {fp} was damaged: dropped (fetched again when read)")
        if i % 8 == 7:
            await trio.sleep(0)  # keep serving the mount meanwhile
    settled, settled_bad = await _check_settled(session, repaired)
    queued = {op.get("ino") for _, op in cache.outbox_items(limit=10_000_000) if op.get("op") == "upload"}
    inodes = {n.ino: n for n in cache.iter_inodes()}
    requeued = 0
    memo: dict[int, bool] = {}
    for node in inodes.values():
        if node.kind == "file" and node.dirty and node.ino not in queued and (node.parent or node.ino == ROOT_INO):
            if not node.node_id and await _kept_here(session, node, memo):
                continue  # an ignore rule keeps it here: no upload is due
            with cache.write() as txn:
                cache.enqueue(txn, {"op": "upload", "ino": node.ino, "force": True})
            requeued += 1
            repaired.append(f"{_path(cache, node.ino)}: local changes had no upload queued; queued one")
    stray = _stray_blocks(cache, set(inodes))
    if stray:
        with cache.write() as txn:
            for ino in stray:
                session.chunks.dirty_bytes -= cache.drop_blocks(txn, ino, from_block=0)
        repaired.append(f"dropped dirty blocks of {len(stray)} inode(s) that no longer exist")
    if requeued:
        session.syncer.wake()
    return {"cached_chunks": checked, "damaged_chunks": dropped, "uploads_requeued": requeued,
            "stray_block_inodes": len(stray), "settled_files": settled,
            "damaged_settled_files": settled_bad}


async def _check_settled(session: Session, repaired: list[str]) -> tuple[int, int]:
    """Every chunk of every settled file's version against its blocks (`verify_settled`:
    blocks that do not hold it are dropped, and a read fetches it). Returns (files
    checked, files damaged)."""
    cache, content, checked, damaged = session.cache, session.drive.content, 0, 0
    session.fsck_progress = {"phase": "settled files", "done": 0, "total": len(cache.settled)}
    for ino in list(cache.settled):
        session.fsck_progress["done"] += 1
        node = cache.get(ino)
        if node is None or ino not in cache.settled:
            continue
        checked += 1
        for chunk in await content.base_chunks(node):
            if ino not in cache.settled:
                break  # written to or evicted meanwhile: nothing of that version left here
            if not content.verify_settled(node, chunk):
                damaged += 1
                repaired.append(f"{_path(cache, ino)}: its cached blocks did not hold chunk {chunk.fingerprint} "
                                f"of its version: dropped (fetched again when read)")
                break
            await trio.sleep(0)  # keep serving the mount meanwhile
    return checked, damaged


async def _kept_here(session: Session, node: Any, memo: dict[int, bool]) -> bool:
    try:
        return await session.ignore.ignored(node, memo)
    except Exception:  # noqa: BLE001 - rules that cannot be read now: treat it as a change to send
        return False


def _stray_blocks(cache: Cache, inos: set[int]) -> set[int]:
    stray: set[int] = set()
    with cache.read(buffers=True) as txn:
        for key in txn.cursor(db=cache.blocks).iternext(keys=True, values=False):
            ino = int.from_bytes(bytes(key[:8]), "big")
            if ino not in inos:
                stray.add(ino)
    return stray


async def _check_server(session: Session, problems: list[str], repaired: list[str]) -> dict[str, int]:
    report = await session.client.fsck()
    reuploaded = 0
    for bad in report.bad:
        data = session.chunks.get(bad.fingerprint) or await _settled_copy(session, bad.fingerprint, bad.node_ids)
        files = ", ".join(_path_of_node(session.cache, n) for n in bad.node_ids) or "no live file"
        if data is None:
            problems.append(f"chunk {bad.fingerprint} is bad in the store ({bad.problem}) and this device does "
                            f"not have it; affected: {files}")
            continue
        prepared = await session.client.prepare_upload([wire.ChunkUpload(fingerprint=bad.fingerprint,
                                                                         length=len(data))])
        for ticket in prepared.missing:
            await session.client.put_chunk(ticket, data)
        reuploaded += 1
        repaired.append(f"chunk {bad.fingerprint} was bad in the store ({bad.problem}); uploaded again "
                        f"from this device's cache (used by {files})")
    return {"checked_chunks": report.checked, "bad_chunks": len(report.bad), "reuploaded": reuploaded}


async def _settled_copy(session: Session, fingerprint: str, node_ids: list[int]) -> bytes | None:
    """The chunk's bytes from the blocks of a settled file here that holds it, if they
    still hash to its fingerprint (the server's answer names the files that hold it)."""
    cache, content = session.cache, session.drive.content
    for node_id in node_ids:
        ino = cache.ino_for_node(node_id)
        node = cache.get(ino) if ino else None
        if node is None or node.ino not in cache.settled:
            continue
        for chunk in await content.base_chunks(node):
            if chunk.fingerprint == fingerprint and content.verify_settled(node, chunk):
                return content.settled_bytes(node, chunk.offset, chunk.offset + chunk.length)
    return None


def _path(cache: Cache, ino: int) -> str:
    return "/" + "/".join(cache.names_to(ino))


def _path_of_node(cache: Cache, node_id: int) -> str:
    ino = cache.ino_for_node(node_id)
    return _path(cache, ino) if ino else f"node {node_id} (not in this device's mirror)"

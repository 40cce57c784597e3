"""This device's own storage: the LMDB mirror and outbox, the chunk cache, room for writes, fsck."""

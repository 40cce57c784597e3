"""cloudfs: a self-hosted cloud drive as a FUSE filesystem.

The installed package maps the repository's folders: `cloudfs.fs` (fs/),
`cloudfs.backend` (backend/) and `cloudfs.server` (server/).
"""

__version__ = "0.1.0"

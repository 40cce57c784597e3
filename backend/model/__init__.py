"""The drive as the mount sees it: inodes, content over a base version, lazy chunk fetches, hard links, xattrs."""

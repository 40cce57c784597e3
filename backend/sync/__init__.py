"""Keeping the mirror and the server in step: the syncer and uploader push, the follower and mirror pull."""

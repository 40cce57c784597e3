"""Daily use around the sync: pinned files, ignore rules, transfers and per-file state, the control socket."""

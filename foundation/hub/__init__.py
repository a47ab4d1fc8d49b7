"""Hub I/O: push/pull of checkpoints, adapters and corpora, model cards, and pdefm's own Hub server."""

"""Pretraining scOT on streamed multi-PDE corpora with accelerate: config, loop, checkpoints."""

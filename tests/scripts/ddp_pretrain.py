"""Run under `accelerate launch --num_processes 2`: pretrain a few steps, record what each rank saw.

Writes OUT/rank-<r>.json with the world size, distributed type, the trajectory ids this rank trained on and
a checksum of its final weights; tests/test_pretrain.py compares the ranks.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import torch

from foundation.pretrain.config import PretrainConfig
from foundation.pretrain.loop import build_trainer

corpus, out = sys.argv[1], Path(sys.argv[2])
config = PretrainConfig(
    corpus=[corpus],
    out=str(out),
    model_overrides={"image_size": 32},
    max_steps=4,
    batch_size=2,
    warmup_steps=1,
    pairs_per_trajectory=1,
    shuffle_buffer=1,
    checkpoint_every=2,
    log_with="none",
    progress=False,
    overwrite=True,
)
trainer, stream, _ = build_trainer(config)
stream.return_ids = True
seen: list[str] = []


class RecordingLoader:
    """The run's loader, noting the trajectory ids of every batch this rank trains on."""

    def __init__(self, inner):
        self.inner, self.dataset = inner, inner.dataset

    def __iter__(self):
        for batch in self.inner:
            seen.extend(batch.pop("id"))
            yield batch

    def state_dict(self):
        return self.inner.state_dict()


trainer.loader = RecordingLoader(trainer.loader)
trainer.fit()
acc = trainer.accelerator
state = acc.unwrap_model(trainer.model).state_dict()
digest = hashlib.sha256(b"".join(t.detach().cpu().contiguous().numpy().tobytes() for t in state.values()))
record = {
    "num_processes": acc.num_processes,
    "distributed_type": acc.distributed_type.value,
    "ids": seen,
    "weights_sha256": digest.hexdigest(),
    "ddp": isinstance(trainer.model, torch.nn.parallel.DistributedDataParallel),
}
(out / f"rank-{acc.process_index}.json").write_text(json.dumps(record))

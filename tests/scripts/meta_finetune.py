"""Meta-learning through `finetune()` on 4 training tasks (2 per outer step); run directly or under
`accelerate launch`. Prints one JSON line with the world size and the validation curve."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from accelerate import PartialState  # noqa: E402
from finetune_helpers import family_trajectories  # noqa: E402

from finetune.api import InputOptions, finetune  # noqa: E402
from finetune.methods.meta import MetaOptions  # noqa: E402
from finetune.trainer import TrainConfig  # noqa: E402

checkpoint, out = sys.argv[1], sys.argv[2]
result = finetune(
    checkpoint,
    list(family_trajectories("allen_cahn", 6)),
    4,
    "meta",
    out,
    options=MetaOptions(inner_steps=1, outer_lr=2e-3, tasks_per_step=2, learn_inner_lr=True),
    train=TrainConfig(epochs=2, batch_size=5, device="cpu", mixed_precision="no"),
    inputs=InputOptions(),
)
if PartialState().is_main_process:  # one line of output: ranks printing together interleave
    print(json.dumps({"world_size": result.world_size, "val": [row["val_loss"] for row in result.history]}))

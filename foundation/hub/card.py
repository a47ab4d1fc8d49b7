"""Model cards for pdefm checkpoints: README.md with Hub YAML metadata, written from the training summary."""

from __future__ import annotations

import json
import math
from pathlib import Path

from huggingface_hub import ModelCard, ModelCardData

_INTENDED_USE = (
    "A pretrained operator for time-dependent 2D PDEs: it maps a state u(t) and a lead time to u(t + lead). "
    "It is meant as a starting point for few-shot fine-tuning on a new PDE or new coefficients "
    "(full, LoRA, meta-learning or PhysGuard adaptation), and for zero-shot evaluation on the pretraining "
    "families. It is not a certified solver: check its error against a numerical reference on your problem."
)


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4g}"


def write_model_card(
    folder: str | Path,
    summary: dict,
    training_args: dict,
    repo_id: str | None = None,
    siblings: list[str] | None = None,
) -> Path:
    """Write ``folder/README.md``: YAML metadata (library_name, license, tags, families, data size, steps,
    final metrics), sections on intended use and how to fine-tune, the downstream error recorded while the
    run trained (``folder/metrics.jsonl``) and, given `siblings` (run folders or Hub ids), the model's
    position among them."""
    from foundation.hub.run_records import downstream_section, read_rows, run_record, siblings_section

    folder = Path(folder)
    records = downstream_section(read_rows(folder / "metrics.jsonl"))
    if siblings:
        this = {**run_record(str(folder)), "name": repo_id or folder.parent.name}
        records += "\n" + siblings_section(this, [run_record(s) for s in siblings])
    families = sorted(summary.get("families", {}))
    trajectories = sum(summary.get("families", {}).values())
    hub_corpora = [c for c in training_args.get("corpus", []) if not Path(c).exists() and c.count("/") == 1]
    data = ModelCardData(
        library_name="pdefm",
        license="apache-2.0",
        tags=["pdefm", "pde", "scot", "poseidon", "operator-learning", "physics", *families],
        datasets=hub_corpora or None,
        pipeline_tag=None,
    )
    # extra metadata fields kept as given (the Hub ignores unknown keys)
    extra = {
        "pde_families": families,
        "training_trajectories": trajectories,
        "training_examples_seen": summary.get("examples_seen"),
        "training_steps": summary.get("steps"),
        "channels": summary.get("channels"),
        "final_train_loss": summary.get("final_train_loss"),
        "final_eval_loss": summary.get("final_eval_loss"),
        "preset": summary.get("preset", training_args.get("preset")),
    }
    for key, value in extra.items():
        setattr(data, key, value)
    model_id = repo_id or "<org/name>"
    channels = ",".join(summary.get("channels") or [])
    body = f"""
# pdefm scOT ({extra["preset"]}) pretrained on {len(families)} PDE families

scOT (the Poseidon architecture) pretrained with `pdefm pretrain` on a streamed mixture of
{trajectories} trajectories from: {", ".join(families) or "n/a"}.

| | |
|---|---|
| optimizer steps | {summary.get("steps")} |
| examples seen | {summary.get("examples_seen")} |
| processes | {summary.get("world_size")} |
| mixed precision | {summary.get("mixed_precision")} |
| final train loss (relative L1, mean of last steps) | {_fmt(summary.get("final_train_loss"))} |
| final held-out loss | {_fmt(summary.get("final_eval_loss"))} |
| channels | {channels} |

{records}
## Intended use

{_INTENDED_USE}

## How to fine-tune

```bash
pdefm finetune --model {model_id} --data my_trajectories.nc --shots 32 --method lora --out ft-out
```

or in Python:

```python
from foundation.loading import load_model
model = load_model("{model_id}")  # add num_channels=... for a different field layout
```

## Training arguments

```json
{json.dumps(training_args, indent=1)}
```
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    card.save(folder / "README.md")
    return folder / "README.md"

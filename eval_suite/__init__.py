"""pdefm evaluation layer: metrics, baselines, zero-/few-shot studies, scaling laws, the quickstart."""

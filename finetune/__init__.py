"""pdefm adaptation layer: few-shot full, LoRA, meta-learned and PhysGuard fine-tuning."""

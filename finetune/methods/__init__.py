"""Adaptation methods: full (Poseidon's recipe), LoRA (peft), meta (LeMON-style), PhysGuard (Fisher projection)."""

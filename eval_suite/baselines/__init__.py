"""Baselines trained on the same few shots with the same budget: FNO, U-Net and scOT from scratch."""

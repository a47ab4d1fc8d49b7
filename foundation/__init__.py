"""pdefm model layer: the scOT model, pretraining with accelerate, Hub I/O and the local Hub server."""

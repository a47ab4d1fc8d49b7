"""pdefm data layer: PDE solvers, corpora, streaming mixtures, semigroup pairs, user file formats."""

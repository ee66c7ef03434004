"""The engine: data, models, logical layers, training, evaluation of barriers, weight matching, BN reset, the claims
machinery, typed config sections, plotting and atomic I/O. It knows nothing of stages, params files or DVC; every
other package of llmc_utils builds on it."""

"""The `llmc` command: barriers, alignment and BN reset between any two checkpoints of a user's own. It reads a user's
files without pickle, and reuses the engine (llmc_utils.core) and the Fig. 2 orders of the cumulative stage."""

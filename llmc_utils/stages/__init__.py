"""One module per stage of the pipeline, named after it. Each declares its `SPEC` (llmc_utils.stages.spec), beside its
config section, its claims and the functions its notebook calls. Stage modules import llmc_utils.core and, where a
stage reuses another's measurement, other stage modules."""

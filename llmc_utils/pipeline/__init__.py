"""Running the stages: params validation (every section of every stage), stage setup, dvc.yaml, profiles, the
scale-out launcher, the aggregate figures and the report. The top layer: it imports stages and core, nothing imports
it except notebooks, scripts and tests."""

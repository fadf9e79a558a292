"""Sweeps with Ray Tune over the same dotted keys as `--set`.

- search spaces and their grid points are the job config's (`pipeline.config.spaces`): checked before Ray
- results.py  trials ranked by their metric, the results table, CSV and plots (pure)
- driver.py   the Tuner: one Ray Train run per trial, ASHA, and the sweep's results directory
"""

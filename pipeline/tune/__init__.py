"""Sweeps with Ray Tune over the same dotted keys as `--set`.

- spaces.py   search spaces, the grid points they expand to and each trial's overrides; checked before Ray (pure)
- results.py  trials ranked by their metric, the results table, CSV and plots (pure)
- driver.py   the Tuner: one Ray Train run per trial, ASHA, and the sweep's results directory
"""

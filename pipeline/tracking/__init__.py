"""Experiment trackers (`run.report_to`): TensorBoard event files, MLflow runs and W&B runs, written by rank 0
beside metrics.jsonl, which stays the record of every run. Plain Python; each tracker's library is imported only
when a run asks for it.

  plan.py     what a run's trackers are (`TrackingPlan`): chosen, named and given ids on the driver and kept in
              <run>/tracking.json, so that a resumed run (a restarted worker group, a killed driver, the same
              run.name again) continues the same tracker runs
  writers.py  one writer per tracker, each reading back from the tracker itself the last step it holds of every
              metric, so that a resumed run never logs a step twice or out of order; `Trackers` fans out to them
  wandb_files.py  W&B's offline run files read back (the step each metric reached there)
  sweep.py    a sweep's parent (an MLflow parent run, a W&B group) and its trials' end states
"""

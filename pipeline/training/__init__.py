"""Training: the driver that plans a run and starts Ray Train's TorchTrainer (`driver`), and the parts only
training uses (the objective, the optimiser and step, each worker's batches, validation, phases, resume and
attempts, warm starts, the run lock)."""

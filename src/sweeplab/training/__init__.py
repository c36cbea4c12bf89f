"""One training run, from a typed config to an MLflow run; knows nothing of Optuna.

data, mnist    datasets as tensors (the synthetic tasks, MNIST and any IDX image dataset)
model          the 2-layer network and the loss of each task
optim          torch.optim optimizers and learning-rate schedules from the config
trainer        the training loop: run(cfg, callbacks) -> TrainResult
checkpoint     a run's state at the end of an epoch, saved and resumed bit for bit
fast/          the optional speed path behind one entry (hand-derived gradients, LeanAdam,
               the C++ loops)
stack/         many networks trained at once as one wide network (a sweep's stacked trials)
tracking       the MLflow run around a training: train_and_track(cfg)
mlflow_helper  the training process's end of the MLflow helper process (never imports MLflow)
mlflow_store   what the helper does to the MLflow store (and where the helper cannot, this process)
plots          the run's pictures
"""

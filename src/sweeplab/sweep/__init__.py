"""Optuna sweeps over the Hydra config: `python -m sweeplab.sweep sweep=<name>`.

cli       the Hydra edge: check the plan, run it, print the summary
plan      the sweep's settings, search space and storage, checked before any trial
space     search spaces in hydra-optuna-sweeper syntax <-> Optuna distributions
sampling  the sampler and the pruner, `_target_` nodes
storage   the Optuna storage, the budget lock, dead-worker detection
worker    claims trials and trains each as an MLflow child run (training.tracking)
results   the study's MLflow parent run, trials.csv, Optuna's plots, best.yaml
run       the main process: extra workers, the progress bar, the end of the sweep
"""

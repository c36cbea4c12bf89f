"""sweeplab: hyperparameter experiments on small PyTorch networks.

    config.py      the typed schemas behind conf/, every value check, the output folders
    runtime.py     how a process starts and stops (signals, Ctrl-C, exit codes)
    provenance.py  git commit, machine and library versions of a run
    figures.py     matplotlib for pictures in files
    train.py       python -m sweeplab.train: one run (the Hydra edge)
    training/      one run: data, model, optimizer, the loop, MLflow tracking
    sweep/         python -m sweeplab.sweep: Optuna studies of many runs
    report.py      python -m sweeplab.report: reports generated from MLflow runs

Imports go one way: config and runtime at the bottom, training above them, sweep above training.
"""

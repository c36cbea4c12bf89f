"""python -m sweeplab.sweep: see `sweeplab.sweep.cli`."""

from sweeplab.training import mlflow_helper

# before the imports below (torch, Optuna, Hydra: seconds): the helper imports MLflow meanwhile
mlflow_helper.start()

from sweeplab.sweep.cli import main  # noqa: E402

main()

"""Train one 2-layer network from the Hydra config and track it in MLflow.

    python -m sweeplab.train                                   # the synthetic task, defaults
    python -m sweeplab.train model.d_hidden=8 model.activation=relu optimizer=sgd optimizer.lr=0.1
    python -m sweeplab.train experiment=lecture_synthetic      # the lecture's first demo
    python -m sweeplab.train --cfg job                         # print the composed config only

Hydra stays here at the edge: the `@hydra.main` function turns the composed config into typed
dataclasses and calls `training.tracking.train_and_track`, a plain function that sweeps and tests
call too.
"""

from __future__ import annotations

from sweeplab.training import mlflow_helper

if __name__ == "__main__":  # before Hydra composes and torch loads: it imports MLflow meanwhile
    mlflow_helper.start()  # (a command that then writes nothing stops it at once)

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from sweeplab import runtime  # noqa: E402
from sweeplab.config import CONF_DIR, Config, ConfigError, store_uri, to_config  # noqa: E402
from sweeplab.phases import mark_phase  # noqa: E402
from sweeplab.stores import check_reachable, ui_link  # noqa: E402


def summary(cfg: Config, metrics: dict[str, float], epochs: int, run_id: str) -> str:
    shown = ", ".join(
        f"{key}={value:.4f}" for key, value in metrics.items() if key.startswith(("test/", "val/"))
    )
    uri = store_uri(cfg.tracking)
    served = "" if uri.startswith(("http://", "https://")) else "  (`make ui` serves it)"
    return (
        f"{epochs} epochs: {shown}\n"
        f"MLflow run {run_id} in experiment '{cfg.tracking.experiment}' (store {uri}):\n"
        f"  {ui_link(uri, run_id)}{served}"
    )


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(composed: DictConfig) -> None:
    runtime.config_composed()
    try:
        cfg = to_config(composed)
        check_reachable("tracking.uri", store_uri(cfg.tracking))
    except ConfigError as err:
        runtime.exit_with_error(err)
    mark_phase("config composed and checked")
    runtime.raise_keyboard_interrupt_on_signals()
    # torch (seconds to import) only once the config is good: `--cfg job`, `--help` and a bad
    # value answer at once
    from sweeplab.training import data, tracking, trainer

    mark_phase("torch imported")
    runtime.freeze_long_lived_objects()
    try:  # no run for a device this machine lacks, unreadable data or a network too big
        trainer.check_memory(cfg, data.load_dataset(cfg.data))  # (data kept for the run)
    except ConfigError as err:
        runtime.exit_with_error(err)
    try:
        result, run_id = tracking.train_and_track(cfg)
    except trainer.DivergenceError as err:  # the run is FAILED in MLflow with this reason
        runtime.exit_with_error(err, code=runtime.EXIT_WORK_FAILED)
    except Exception as err:
        runtime.exit_if_machine_failed(err)
        raise
    mark_phase("run ended: everything in the store")
    print(summary(cfg, result.metrics, len(result.history), run_id))


def main() -> None:
    runtime.run_cli(_hydra_main)


if __name__ == "__main__":
    main()

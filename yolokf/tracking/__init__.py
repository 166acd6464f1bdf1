"""MLflow (issue 25): `plan` checks `--mlflow`, `--mlflow-experiment` and `--mlflow-secret` on your machine; `step`
(a step's MLflow run, every epoch's metrics, artifacts) and `registry` (`--registry mlflow`) run inside the steps."""

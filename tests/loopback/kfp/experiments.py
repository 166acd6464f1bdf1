"""Experiments: create (a name unique in its namespace), get and list; a run without one goes to "Default"."""

from __future__ import annotations

from typing import Any

from tests.loopback.kfp.listing import Listing
from tests.loopback.kfp.protojson import EPOCH, ApiError, emit
from tests.loopback.kfp.state import get


def experiment_json(experiment: dict[str, Any]) -> dict[str, Any]:
    return emit({**experiment, "last_run_created_at": experiment.get("last_run_created_at") or EPOCH})


class ExperimentsApi(Listing):
    def _list_experiments(self, query: dict[str, str]) -> dict[str, Any]:
        options = self._list_options("experiments", query)
        namespace = self._namespace(query.get("namespace"))
        items = [e for e in self.experiments.values() if not namespace or e["namespace"] == namespace]
        return self._page("experiments", items, options, experiment_json)

    def _get_experiment(self, experiment_id: str) -> dict[str, Any]:
        return experiment_json(get(self.experiments, experiment_id, "Experiment"))

    def _create_experiment(self, body: dict[str, Any]) -> dict[str, Any]:
        name = body.get("display_name")
        if not name:
            raise ApiError(400, "Invalid input error: Experiment must have a non-empty name")
        namespace = self._namespace(body.get("namespace"))
        if any(e["display_name"] == name and e["namespace"] == namespace for e in self.experiments.values()):
            raise ApiError(409, f"Already exist error: Experiment {name} already exists")
        experiment = {
            "experiment_id": self._new_id(),
            "display_name": name,
            "description": body.get("description") or "",
            "created_at": self._now(),
            "namespace": namespace,
            "storage_state": "AVAILABLE",
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

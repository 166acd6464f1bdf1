"""Sweeps (`yolokf tune`): the search space and the plan (`space`, `plan`, on your machine), and the selection
steps that rank trials and write the sweep report (`select`, `report`, inside the pipeline)."""

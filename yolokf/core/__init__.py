"""Shared basics every other package may use: the training fields (`settings`), errors, tasks and their metrics,
the GPU rule, the fail-fast offline checks, and where a pod mounts its volumes. Imports nothing else of yolokf."""

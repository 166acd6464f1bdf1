"""Runs: a pipeline run here through kfp.local (`local`) or submitted to a cluster (`kfp_api`, `submit`), and
followed there (`follow`, `steplogs`, `progress`). Runs on your machine."""

"""Code that runs inside a pipeline step (it may import torch and ultralytics): train, report, checkpoints, fetch.

Each step's entry point is a plain function the component in `yolokf.pipeline` calls; all of them run and are
tested without KFP.
"""

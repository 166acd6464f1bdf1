"""yolokf: train Ultralytics YOLO models on Kubeflow Pipelines, from a laptop to a cluster."""

__version__ = "0.1.0"

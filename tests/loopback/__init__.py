"""Strict servers that tests start on 127.0.0.1 and drive with the real client libraries: Kubeflow Pipelines (kfp),
the Model Registry (model_registry), a Kubernetes API server subset (kube) and S3 (moto behind a fault proxy, s3).
What they share, the threaded HTTP server, request log, injected faults, JSON answers and strict field checks, is in
base."""

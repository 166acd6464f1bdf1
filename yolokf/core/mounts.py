"""Where a step's pod finds its volumes, and the two credential markers the download step is compiled with.

Fixed mount points, so a retried or re-submitted step finds the same files at the same paths; the pipeline
mounts them (`yolokf.pipeline.step_options`) and the steps read them.
"""

SHM_PATH = "/dev/shm"
DATA_PVC_PATH = "/mnt/yolokf/data"
CHECKPOINT_PVC_PATH = "/mnt/yolokf/checkpoints"
DATA_CACHE_PATH = "/mnt/yolokf/data-cache"  # --data-cache-pvc: the download, training, evaluate and export steps
# `--data-secret -`: the pod has object-storage credentials already (IRSA, Workload Identity, node role).
AMBIENT_CREDENTIALS = "-"
# What the download step is told when no --data-secret was compiled: an s3:// or gs:// `data` fails at once.
NO_CREDENTIALS = ""

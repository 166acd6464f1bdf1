"""Where a step's pod finds its volumes, and what the download step is compiled with: credential markers, workers.

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
# --fetch-workers: objects in flight (yolokf.data.transfer), given to the download step's pod in this variable.
DEFAULT_WORKERS = 32  # peak memory is about workers x PART_SIZE at worst
WORKERS_ENV = "YOLOKF_FETCH_WORKERS"
# Set by the subprocess runner: every step sees this machine's disk, so a dataset name is passed through (issue 23).
SHARED_DISK_ENV = "YOLOKF_SHARED_DISK"

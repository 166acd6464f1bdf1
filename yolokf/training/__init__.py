"""Training, in one pod, on several GPUs or across nodes. Runs inside the training step (it may import torch and
ultralytics): `train` (the step), `checkpoint` (resume), `report`, `result`, `trial` (a sweep trial's folder and
budget); `distributed` and `node` (the torchrun worker), `launch` and `preflight` (the `--nodes` launcher)."""

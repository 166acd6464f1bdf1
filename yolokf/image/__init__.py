"""The training image: built from this source tree and pushed through a Docker engine.

- `context`: what goes into the image and what it is called. The build context (Dockerfile, requirements,
  yolokf as a site folder, optional weights) as a deterministic tar, its content-hash tag, the labels known
  before the build, and `describe`, the dry-run lines. No Docker needed.
- `engine`: the Docker SDK. `docker_client()`, the build with its version labels, the push, and the
  `BuildEvents` callbacks through which a caller shows progress (the CLI's is `yolokf.cli.console.BuildReporter`).
- `records`: the builds and pushes remembered in `<cache>/images.json`, and `resolve_image`, the image that
  `compile` and `run` pin.

Nothing here is imported by `yolokf/__init__.py`; import the submodule you need.
"""

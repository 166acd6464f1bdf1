"""Data: `--data` parsed once (`sources`), datasets on disk (`datasets`, `shapes`, the task check), and the
download step that runs in its pod (`fetch`, with the object-store reads in `remote`, the parallel engine in
`transfer` and the PVC cache in `cache`)."""

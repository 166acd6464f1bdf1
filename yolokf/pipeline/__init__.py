"""The pipeline: a job planned once (`job`), the pods' settings (`step_options`), the run parameters (`contract`),
the components and pipelines that `compile`, local and cluster runs share (`components`, `pipelines`), and the
`--nodes` TrainJob (`trainjob`). Runs on your machine; the steps' code lives in the capability packages."""

"""Promotion: what happens to a trained model. `plan` checks the promote flags on your machine; `evaluate`,
`export`, `parity`, `gate`, `publish`, `register` and `serving` run inside the promote steps."""

"""Entry points for `ray job submit --working-dir . -- python -m ray_jobs.<task> [overrides]`.

Each file is a thin wrapper over the `moaa` CLI: the job's driver joins the cluster it was
submitted to (RAY_ADDRESS is set by Ray), so use `cluster=ray_address` or a cluster config
with `address: auto`.
"""

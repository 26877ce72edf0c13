"""Entry points for ``ray job submit``: one module per ``moaa`` task.

    ray job submit --address http://HEAD:DASHBOARD_PORT \\
        --runtime-env ray_jobs/runtime_env.yaml --working-dir . \\
        -- python -m ray_jobs.synth mixture=... output_root=/shared/outputs

Each module forwards its arguments to ``moaa <task>`` (``moaa_cluster.cli.main``). The job's
driver joins the cluster it was submitted to: Ray sets ``RAY_ADDRESS`` for it and
``moaa_cluster.runtime.init_ray`` uses that when the cluster config has no address, so the
cluster config (``cluster=local`` by default) only contributes its engine settings.
``python -m ray_jobs <task> ...`` reaches any task, including ones without a module here.
"""

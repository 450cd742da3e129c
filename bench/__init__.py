"""batchline's benchmark harness: ``python -m bench [scenario ...] [--quick]``.

Modules: :mod:`bench.__main__` (command line, table, JSON), :mod:`bench.registry` (the one
table of scenarios), :mod:`bench.harness` (server, child processes, machine info),
:mod:`bench.stats` (percentiles, results), :mod:`bench.workloads` (inputs and output checks),
:mod:`bench.scenarios_queue` (batchline via its Python client, and the in-process limit),
:mod:`bench.scenarios_compose` (a chain's added stages, the fan-out ensemble; the bench's own
pipelines in :mod:`bench.pipelines`),
:mod:`bench.scenarios_rq` (the rq baselines, with :mod:`bench.rq_jobs` and
:mod:`bench.rq_worker`), :mod:`bench.scenarios_http` (the HTTP gateway against a bare FastAPI
app, :mod:`bench.hello_app`, loaded by :mod:`bench.loadgen`), :mod:`bench.watchdog` (cleanup
should the bench be killed).
"""

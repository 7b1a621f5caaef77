"""What the benchmarks share: starting the stack, timing, writing results.

Every benchmark runs as ``python bench/NAME.py``, so ``bench/`` is on ``sys.path`` and its
scripts import these modules as ``harness.results``, ``harness.timing`` and ``harness.stack``:

* ``results`` — the header a results file opens with (``created``, ``command``, ``machine``),
  the load average, package versions, ``write_json`` (written whole, then renamed into place, so
  a run cut short never leaves half a file) and the Agg ``pyplot`` / ``save_figure`` for the PNG
  beside it;
* ``timing`` — percentile summaries, a wall + CPU stopwatch and best-of-N timing;
* ``stack`` — the real processes a benchmark measures, each in a process group of its own
  (``service.processes.GroupChild``): ``ospo serve`` (``Api``), ``ospo worker`` (``Worker``), any
  other ``ospo`` command, a private Redis or PostgreSQL server, a throw-away PostgreSQL schema,
  and waiting for an HTTP endpoint.

``results`` and ``timing`` import only the standard library: bench/gpu_step.py and
bench/gpu_check.py use them on a GPU machine that lacks the serving stack (tests check it).
``stack`` imports httpx and the service's process helpers.
"""

"""FFN activation search (PRD §14): multi-fidelity, fair, confirmed, over ``activationPool``.

Pure logic (no training, no Prefect, no storage):

- ``candidate``   ids, lineage (continuations, exploit/explore), results
- ``population``  generation 0 (shared seeds; the lr gene's grid), population statistics
- ``strategies``  ranking by ``rankBy``, successive halving, PBT exploit/explore
- ``health``      gates that mark diverged / stalled candidates (never ``ok``)
- ``fitness``     PRD §14.3 fitness (via ``symbio.metrics``) + diversity bonus
- ``confirm``     the pick vs the baseline vs gelu, paired seeds, held-out test split
- ``stats``       mean/sd and paired 95% t intervals (no scipy)
- ``loop``        the generation loop and the confirmation, run through an executor
- ``report``      summary, candidates JSONL / lake rows, Markdown report, compute
- ``estimate``    the duration estimate and the "will it learn" warning before a search

Orchestration: ``executors.ThreadExecutor`` (plain threads) and
``tasks.search_runner.run_search`` (trains candidates with the engine, writes
the run directory and the lake). ``tasks.search_tasks`` / ``flows.search_flow``
run the same loop as Prefect tasks. See ``docs/search.md``.
"""

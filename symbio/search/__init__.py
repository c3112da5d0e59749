"""FFN activation search (PRD §14): evolutionary or exhaustive, over ``activationPool``.

Pure logic (no training, no Prefect, no storage):

- ``candidate``   ids, lineage, results
- ``population``  initial population, population statistics
- ``strategies``  ranking by ``rankBy``, top-k / tournament selection, mutation, elitism
- ``fitness``     PRD §14.3 fitness (via ``symbio.metrics``) + diversity bonus
- ``loop``        the generation loop and its steps, run through an executor
- ``report``      summary, candidates JSONL / lake rows, Markdown report
- ``estimate``    the duration estimate printed before a search

Orchestration: ``executors.ThreadExecutor`` (plain threads) and
``runner.run_search`` (trains candidates with the engine, writes the run
directory and the lake). ``tasks.search_tasks`` / ``flows.search_flow`` run
the same loop as Prefect tasks. See ``docs/search.md``.
"""

"""Benchmarks with their official metrics and a batched greedy runner.

- `vqa`, `pope`, `counting`: answer parsing and scoring as the benchmarks define them;
- `metrics`: the tasks (vqa, exact, counting, pope) and their aggregate metrics;
- `questions`: question files and task inference; `baselines`: chance and majority accuracy;
- `runner`: `evaluate`, `evaluate_files`, `evaluate_main` (the `llavakit eval` command);
- `report`: rich and markdown tables.

Import from the submodules (or `llavakit.evaluate`), so that loading one metric does not load torch.
"""

"""Benchmarks with their official metrics and a batched greedy runner.

- `benchmarks/`: the papers' benchmarks read from their published files (VQAv2, VizWiz, GQA,
  TextVQA, POPE, ScienceQA-IMG, MMBench, SEED-Bench, MME, LLaVA-Bench, MM-Vet), one module per
  family, with `load_benchmark` and the pure `score_benchmark`;
- `answers`: answers files in LLaVA's format (resume, matching answers made elsewhere);
- `judge`: the LLM judge of LLaVA-Bench and MM-Vet; `benchmark_run`, `benchmark_main`: generation
  with resume, results files, the `llavakit eval --task` and `llavakit eval score` forms;
  `benchmark_report`: their tables;
- `vqa`, `pope`, `counting`: answer parsing and scoring as the benchmarks define them;
- `metrics`: the tasks of llavakit's own question files (vqa, exact, counting, pope);
- `questions`: those files and task inference; `baselines`: chance and majority accuracy;
- `runner`: `evaluate`, `evaluate_files`, `evaluate_main` (`llavakit eval CKPT FILES...`);
- `report`: rich and markdown tables of question-file results;
- `parallel`: several processes (torchrun) answer shards of a benchmark, process 0 merges and scores;
- `lmms_eval_model`: llavakit checkpoints as an lmms-eval model (`--model llavakit`; the optional
  `lmms-eval` extra, the only module that imports it).

Import from the submodules (or `llavakit.evaluate`), so that loading one metric does not load torch.
docs/evaluation.md says, per benchmark, which files to download, the command, and how it is scored.
"""

"""Training: stage recipes, the Trainer, distributed launch and resume.

    from llavakit.train.config import load_config
    from llavakit.train.run import run_training
    result = run_training(load_config("configs/tiny/pretrain.yaml", ["output.dir=runs/tiny-pretrain"]))

Modules: `config` (the recipe schema: YAML + dotted overrides), `config_checks` (values that
cannot work, refused at load time), `recipes` (what trains in each stage, at which rate;
freezing), `model_setup` (the model and processor a run starts from; stage-1 weights),
`arguments` (config -> Trainer arguments), `trainer` (the Trainer subclass), `skips`
(bad-sample accounting), `plots` (loss curve), `run_folder` (what a run checks before it
builds the model: output folder, inputs, checkpoint), `resume` (which config changes a resume
refuses or applies), `checkpoint_files` (truncated or damaged checkpoint files named), `run`
(`run_training`, `train_main`). Submodules are imported on use, so `import llavakit.train`
stays light.
"""

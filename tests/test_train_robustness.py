"""Bad samples are skipped, counted and reported (or stop the run); LoRA trains adapters; QLoRA says what it needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import LlamaForCausalLM, set_seed

from conftest import Sample, tiny_recipe, write_llava_data
from llavakit import LlavaKitForCausalLM
from llavakit.tiny import tiny_text_config
from llavakit.train.config import TrainConfig
from llavakit.train.model_setup import build_model_and_processor
from llavakit.train.recipes import resolve_config
from llavakit.train.run import run_training
from llavakit.train.skips import SkipPolicy, SkipReport, TooManyBadSamplesError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def mixed_data(folder: Path, good: int = 8) -> Path:
    """`good` fine samples, then two whose image is missing and one with no answer to learn from."""
    fine = [
        Sample(f"ok{i}", "<image>\nDescribe it.", "A blue square.", f"{i}.png", (40 * i % 255, 90, 200))
        for i in range(good)
    ]
    missing = [Sample(f"gone{i}", "<image>\nDescribe it.", "Nothing.", f"missing{i}.png") for i in range(2)]
    return write_llava_data(folder, [*fine, *missing, Sample("mute", "Hello?", None)])


def tiny_finetune(tmp_path: Path, *overrides: str) -> TrainConfig:
    return tiny_recipe(
        "finetune",
        mixed_data(tmp_path / "data"),
        tmp_path / "run",
        "model.connector_weights=null",
        "output.save_steps=0",
        "output.plot=false",
        "data.group_by_modality=false",
        *overrides,
    )


def test_bad_samples_are_skipped_counted_and_reported(tmp_path):
    # one sample per step, so a bad sample leaves a batch with nothing in it: a filler runs, learning nothing
    result = run_training(
        tiny_finetune(
            tmp_path,
            "optimization.global_batch_size=1",
            "optimization.per_device_batch_size=1",
            "data.max_skipped_fraction=0.5",
        )
    )
    report = result.skipped
    assert report.seen == 11 and report.num_skipped == 3
    assert sorted(report.skipped) == [
        ("gone0", f"missing image: {tmp_path / 'data' / 'missing0.png'} does not exist"),
        ("gone1", f"missing image: {tmp_path / 'data' / 'missing1.png'} does not exist"),
        ("mute", "malformed turns: the conversation has no gpt answer to learn from"),
    ]
    assert report.reasons() == {"missing image": 2, "malformed turns": 1}
    assert SkipReport.load(tmp_path / "run") == report
    losses = [loss for _, loss in result.losses]
    assert len(losses) == 11 and sum(loss == 0.0 for loss in losses) == 3  # the three filler steps add nothing
    assert all(loss > 1.0 for loss in losses if loss != 0.0)


def test_too_many_bad_samples_stop_the_run_naming_the_count(tmp_path):
    # 11 samples in batches of 4 (4, 4, 3): the run draws at most 12, and all 11 are drawn. 3 bad are
    # under 26 % of 12, so only the share at the end (27.3 % of 11) stops it.
    with pytest.raises(
        TooManyBadSamplesError,
        match=r"3 of 11 samples were skipped as bad \(27\.3%\), more than data\.max_skipped_fraction=0\.26",
    ):
        run_training(
            tiny_finetune(
                tmp_path,
                "data.max_skipped_fraction=0.26",
                "optimization.global_batch_size=4",
                "optimization.per_device_batch_size=4",
            )
        )
    assert SkipReport.load(tmp_path / "run").num_skipped == 3  # reported before stopping
    assert not (tmp_path / "run" / "model.safetensors").exists()
    # during the run, once enough samples were drawn and the share so far is over
    with pytest.raises(TooManyBadSamplesError, match=r"(\d+) of (\d+) samples were skipped") as stopped:
        run_training(
            tiny_finetune(
                tmp_path / "early",
                "data.max_skipped_fraction=0.2",
                "data.skip_check_min_samples=4",
                "optimization.global_batch_size=1",
                "optimization.per_device_batch_size=1",
                "optimization.epochs=5",
            )
        )
    early = SkipReport.load(tmp_path / "early" / "run")
    assert 4 <= early.seen < 55 and f"{early.num_skipped} of {early.seen} samples" in str(stopped.value)


def test_a_run_stops_once_its_bad_share_is_certain_to_end_over_the_limit(tmp_path):
    # 5 epochs of 11 samples (3 bad), one per step: at most 55 samples, of which 1 % is 0.55. The
    # first bad sample already settles it, long before the first epoch ends (and whatever
    # skip_check_min_samples says).
    with pytest.raises(
        TooManyBadSamplesError,
        match=r"1 of the (\d+) samples drawn so far were skipped as bad: more than "
        r"data\.max_skipped_fraction=0\.01 of the at most 55 samples this run draws",
    ) as stopped:
        run_training(
            tiny_finetune(
                tmp_path,
                "data.max_skipped_fraction=0.01",
                "optimization.global_batch_size=1",
                "optimization.per_device_batch_size=1",
                "optimization.epochs=5",
            )
        )
    report = SkipReport.load(tmp_path / "run")
    assert report.num_skipped == 1 and report.seen < 11
    assert f"1 of the {report.seen} samples" in str(stopped.value)


def test_skip_policy_thresholds():
    policy = SkipPolicy(max_fraction=0.1, min_samples=100)
    policy.check(seen=50, skipped=40)  # too early to judge
    policy.check(seen=200, skipped=20)  # exactly the share is allowed
    with pytest.raises(TooManyBadSamplesError, match="21 of 200 samples"):
        policy.check(seen=200, skipped=21)
    with pytest.raises(TooManyBadSamplesError, match="40 of 50 samples"):
        policy.check(seen=50, skipped=40, final=True)
    # of at most 1000 samples, 100 bad are allowed; the 101st settles it however early it comes
    SkipPolicy(max_fraction=0.1, min_samples=10_000).check(seen=150, skipped=100, planned=1000)
    with pytest.raises(TooManyBadSamplesError, match=r"101 of the 150 samples drawn so far .* at most 1000 samples"):
        SkipPolicy(max_fraction=0.1, min_samples=10_000).check(seen=150, skipped=101, planned=1000)
    SkipPolicy(max_fraction=0.0).check(seen=10, skipped=0, planned=100)  # 0: none tolerated, none met
    with pytest.raises(TooManyBadSamplesError):
        SkipPolicy(max_fraction=0.0).check(seen=10, skipped=1, planned=100)


def test_lora_trains_adapters_and_the_connector_then_merges(tmp_path):
    config = tiny_finetune(
        tmp_path,
        "stage.lora.enabled=true",
        "stage.lora.r=4",
        "stage.lora.alpha=8",
        "stage.lora.dropout=0.0",
        "optimization.lr=1e-2",
        "optimization.max_steps=3",
        "output.merge_lora=true",
        "data.max_skipped_fraction=0.5",
    )
    set_seed(config.optimization.seed)
    original, _ = build_model_and_processor(resolve_config(config))  # what run_training starts from
    result = run_training(config)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"adapter_model.safetensors", "adapter_config.json"}
    assert result.model_path == tmp_path / "run" / "merged"
    merged = LlavaKitForCausalLM.from_pretrained(result.model_path).state_dict()
    before = original.state_dict()
    for name in (
        "language_model.model.layers.0.self_attn.q_proj.weight",
        "language_model.model.layers.1.mlp.down_proj.weight",
        "multi_modal_projector.layers.0.weight",
    ):
        assert not torch.equal(merged[name], before[name]), name  # adapters merged in / connector trained
    for name in (
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.0.input_layernorm.weight",
        "vision_tower.encoder.embeddings.patch_embedding.weight",
    ):
        assert torch.equal(merged[name], before[name]), name  # not adapted, frozen


def test_qlora_needs_bitsandbytes_and_cuda(tmp_path):
    LlamaForCausalLM(tiny_text_config()).save_pretrained(tmp_path / "language")
    config = tiny_finetune(
        tmp_path,
        "stage.lora.enabled=true",
        "stage.lora.quantize=4bit",
        "model.tokenizer=tiny",
        f"model.language={tmp_path / 'language'}",
    )
    with pytest.raises(ValueError, match=r"stage\.lora\.quantize=4bit \(QLoRA\) needs (bitsandbytes|a CUDA GPU)"):
        run_training(config)
    dict_config = tiny_finetune(tmp_path, "stage.lora.enabled=true", "stage.lora.quantize=4bit")
    with pytest.raises(ValueError, match="needs model.language to name pretrained weights"):
        run_training(dict_config)

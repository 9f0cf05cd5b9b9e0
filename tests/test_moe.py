"""MoE decoders (MM1): sparse upcycling, top-k routing, the balance loss, LoRA on experts, a tiny training run."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM, MixtralForCausalLM, TrainerCallback

from conftest import COLOURS, Sample, WeightSnapshots, randomized, tiny_recipe, write_llava_data
from llavakit import LlavaKitForCausalLM
from llavakit.model.build import ModelSpec, build_model, compose_model, model_config
from llavakit.model.moe import MoeSpec, apply_moe, routes_tokens, upcycled_config
from llavakit.tiny import tiny_llava_config, tiny_text_config, tiny_vision_config
from llavakit.train.config import LoraConfig, StageConfig, TrainConfig
from llavakit.train.model_setup import apply_lora, build_model_and_processor, expert_parameters, router_modules
from llavakit.train.recipes import freeze_for_stage, resolve_config
from llavakit.train.run import run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGE_TOKEN = 600
TINY_SHAPES = dict(
    vocab_size=640,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


def dense_config(model_type: str):
    """A 2-layer dense decoder of `model_type` (the tiny llama / qwen2, or the same shapes for other families)."""
    if model_type in ("llama", "qwen2"):
        return tiny_text_config(model_type)
    return AutoConfig.for_model(model_type, **TINY_SHAPES)


def tokens(length: int = 12, batch: int = 2) -> torch.Tensor:
    return torch.randint(3, 590, (batch, length), generator=torch.Generator().manual_seed(3))


def pixels(n: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(2))


def llava_prompt(model: LlavaKitForCausalLM) -> torch.Tensor:
    """Text, one expanded image, text: a batch of one."""
    text = tokens(5, 1)[0]
    image = torch.full((model.config.num_image_tokens,), IMAGE_TOKEN)
    return torch.cat([text, image, text])[None]


def dense_llava(text: str = "llama") -> LlavaKitForCausalLM:
    torch.manual_seed(0)
    return randomized(LlavaKitForCausalLM(tiny_llava_config(image_token_id=IMAGE_TOKEN, text=text)), seed=7)


def upcycled_llava(dense: LlavaKitForCausalLM, moe: MoeSpec) -> LlavaKitForCausalLM:
    """`dense` with its language model upcycled: the same vision tower and connector weights."""
    spec = ModelSpec(image_token_id=IMAGE_TOKEN, moe=moe)
    language = apply_moe(copy.deepcopy(dense.language_model), moe)
    model = compose_model(spec, copy.deepcopy(dense.vision_tower.encoder), language)
    model.multi_modal_projector.load_state_dict(dense.multi_modal_projector.state_dict())
    return model.eval()


def routers(model: torch.nn.Module) -> list[torch.nn.Module]:
    return [module.gate for module in model.modules() if hasattr(module, "experts") and hasattr(module, "gate")]


def balance_loss(router_logits: tuple[torch.Tensor, ...], num_experts: int, top_k: int) -> torch.Tensor:
    """Switch Transformer's load-balancing loss over all layers' tokens (no padding): E * sum_i f_i * P_i."""
    logits = torch.cat(router_logits).float()
    probs = logits.softmax(dim=-1)
    chosen = F.one_hot(probs.topk(top_k, dim=-1).indices, num_experts).sum(dim=1).float()
    return num_experts * (chosen.mean(dim=0) * probs.mean(dim=0)).sum()


def shifted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)


# ---- upcycling -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model_type, moe_type",
    [("llama", "mixtral"), ("mistral", "mixtral"), ("qwen2", "qwen2_moe"), ("qwen3", "qwen3_moe")],
)
def test_upcycled_decoder_gives_the_dense_logits(model_type, moe_type):
    torch.manual_seed(0)
    dense = randomized(AutoModelForCausalLM.from_config(dense_config(model_type)), seed=5)
    sparse = apply_moe(copy.deepcopy(dense), MoeSpec(upcycle=True, num_experts=4, top_k=2)).eval()
    assert sparse.config.model_type == moe_type and routes_tokens(sparse.config)
    with torch.no_grad():
        torch.testing.assert_close(sparse(tokens()).logits, dense(tokens()).logits, atol=1e-5, rtol=1e-5)
    # attention, norms and embeddings copied; every expert is the dense FFN; the routers are small noise
    state, own = dense.state_dict(), sparse.state_dict()
    for name in ("model.embed_tokens.weight", "model.layers.1.self_attn.k_proj.weight", "model.norm.weight"):
        assert torch.equal(own[name], state[name])
    gate_up = torch.cat([state["model.layers.1.mlp.gate_proj.weight"], state["model.layers.1.mlp.up_proj.weight"]])
    for expert in range(4):
        assert torch.equal(own["model.layers.1.mlp.experts.gate_up_proj"][expert], gate_up)
        assert torch.equal(
            own["model.layers.1.mlp.experts.down_proj"][expert], state["model.layers.1.mlp.down_proj.weight"]
        )
    router = own["model.layers.1.mlp.gate.weight"]
    assert router.shape == (4, 64) and 0.01 < router.std() < 0.03


def test_upcycled_llava_gives_the_dense_logits():
    dense = dense_llava()
    moe = upcycled_llava(dense, MoeSpec(upcycle=True, num_experts=4))
    assert isinstance(moe.language_model, MixtralForCausalLM)
    assert moe.config.text_config.model_type == "mixtral" and moe.config.text_config.num_local_experts == 4
    input_ids = llava_prompt(dense)
    with torch.no_grad():
        expected = dense(input_ids=input_ids, pixel_values=pixels(1)).logits
        torch.testing.assert_close(
            moe(input_ids=input_ids, pixel_values=pixels(1)).logits, expected, atol=1e-5, rtol=1e-5
        )


def test_build_model_upcycles_and_model_config_agrees():
    spec = ModelSpec(
        vision=tiny_vision_config().to_dict() | {"model_type": "clip_vision_model"},
        language=tiny_text_config().to_dict() | {"model_type": "llama"},
        image_token_id=IMAGE_TOKEN,
        moe=MoeSpec(upcycle=True, num_experts=4, top_k=2, aux_loss_coef=0.05),
    )
    model = build_model(spec)
    text = model.language_model.config
    assert (text.model_type, text.num_local_experts, text.num_experts_per_tok, text.router_aux_loss_coef) == (
        "mixtral",
        4,
        2,
        0.05,
    )
    assert model.language_model.router_aux_loss_coef == 0.05
    assert model.language_model.config._experts_implementation is not None  # kept through composing
    shapes = model_config(spec).text_config.to_dict()
    assert shapes.pop("dtype") is None  # shapes only: the built model records its weights' dtype
    assert shapes == {key: value for key, value in text.to_dict().items() if key != "dtype"}


def test_upcycled_config_keeps_the_dense_shapes():
    dense = tiny_text_config(num_hidden_layers=3, rope_theta=5000.0)
    config = upcycled_config(dense, MoeSpec(upcycle=True, num_experts=6, top_k=2))
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_key_value_heads", "vocab_size"):
        assert getattr(config, key) == getattr(dense, key)
    assert config.rope_parameters["rope_theta"] == 5000.0
    assert (config.num_local_experts, config.output_router_logits, config.router_aux_loss_coef) == (6, False, 0.001)


@pytest.mark.parametrize(
    "language, moe, message",
    [
        (dict(TINY_SHAPES, model_type="gpt2"), MoeSpec(upcycle=True), "cannot upcycle a 'gpt2'"),
        (dict(TINY_SHAPES, model_type="llama", attention_bias=True), MoeSpec(upcycle=True), "no place for"),
        (dict(TINY_SHAPES, model_type="mixtral"), MoeSpec(upcycle=True), "already has experts"),
        (dict(TINY_SHAPES, model_type="llama"), MoeSpec(aux_loss_coef=0.1), "has no experts"),
        (dict(TINY_SHAPES, model_type="llama"), MoeSpec(upcycle=True, num_experts=4, top_k=5), "top_k must be"),
    ],
)
def test_impossible_moe_specs_are_refused(language, moe, message):
    config = AutoConfig.for_model(language.pop("model_type"), **language)
    with pytest.raises(ValueError, match=message):
        apply_moe(AutoModelForCausalLM.from_config(config), moe)


def test_spec_files_accept_the_moe_section(tmp_path: Path):
    config = tiny_recipe(
        "finetune", tmp_path / "data.json", tmp_path / "run", "model.moe.upcycle=true", "model.moe.top_k=1"
    )
    assert config.model.moe == MoeSpec(upcycle=True, num_experts=8, top_k=1)


def test_qlora_does_not_upcycle(tmp_path):
    config = tiny_recipe(
        "finetune",
        tmp_path / "data.json",
        tmp_path / "run",
        "model.language=some-org/dense-llama",
        "model.moe.upcycle=true",
        "stage.lora.enabled=true",
        "stage.lora.quantize=4bit",
    )
    with pytest.raises(ValueError, match="model.moe.upcycle=true copies full-precision weights"):
        build_model_and_processor(config)


# ---- routing and the balance loss ----------------------------------------------------------------


@pytest.mark.parametrize("top_k", [1, 2])
def test_each_token_uses_exactly_top_k_experts(top_k):
    dense = dense_llava()
    moe = upcycled_llava(dense, MoeSpec(upcycle=True, num_experts=4, top_k=top_k, router_init_std=0.5))
    captured = []
    hooks = [
        router.register_forward_hook(lambda module, args, output: captured.append(output)) for router in routers(moe)
    ]
    input_ids = llava_prompt(moe)
    with torch.no_grad():
        moe(input_ids=input_ids, pixel_values=pixels(1))
    for hook in hooks:
        hook.remove()
    assert len(captured) == 2  # one router per layer
    for logits, weights, chosen in captured:
        per_token = torch.zeros_like(logits).scatter(1, chosen, weights.to(logits.dtype))
        assert ((per_token > 0).sum(dim=1) == top_k).all()  # exactly top_k experts weigh in on each token
        torch.testing.assert_close(per_token.sum(dim=1), torch.ones(len(logits)))  # normalised, as Mixtral
        assert torch.equal(chosen.sort(dim=1).values, logits.topk(top_k, dim=1).indices.sort(dim=1).values)
    # a wide router spreads tokens over more experts than one token uses
    assert torch.cat([chosen.flatten() for _, _, chosen in captured]).unique().numel() > top_k


def test_balance_loss_is_added_to_the_loss():
    moe = upcycled_llava(dense_llava(), MoeSpec(upcycle=True, num_experts=4, top_k=2, aux_loss_coef=0.05))
    input_ids = llava_prompt(moe)
    labels = torch.full_like(input_ids, -100)
    labels[0, -5:] = input_ids[0, -5:]
    with torch.no_grad():
        output = moe(input_ids=input_ids, pixel_values=pixels(1), labels=labels)
    assert len(output.router_logits) == 2
    aux = balance_loss(output.router_logits, num_experts=4, top_k=2)
    torch.testing.assert_close(output.aux_loss, aux)
    assert 1.5 < output.aux_loss < 2.5  # top_k (2) when the load is balanced, as routing starts
    expected = shifted_cross_entropy(output.logits, labels) + 0.05 * aux
    torch.testing.assert_close(output.loss, expected, atol=1e-5, rtol=1e-5)


def test_no_router_outputs_without_labels_and_generation_runs():
    moe = upcycled_llava(dense_llava(), MoeSpec(upcycle=True, num_experts=4))
    input_ids = llava_prompt(moe)
    with torch.no_grad():
        output = moe(input_ids=input_ids, pixel_values=pixels(1))
    assert output.aux_loss is None and output.router_logits is None
    generated = moe.generate(
        input_ids=input_ids,
        attention_mask=torch.ones_like(input_ids),
        pixel_values=pixels(1),
        max_new_tokens=4,
        do_sample=False,
    )
    assert generated.shape == (1, input_ids.shape[1] + 4)


def test_an_moe_language_model_trains_with_its_balance_loss():
    """A transformers MoE config as model.language: built as it is, the recipe's coefficient weights its loss."""
    spec = ModelSpec(
        vision=tiny_vision_config().to_dict() | {"model_type": "clip_vision_model"},
        language=dict(TINY_SHAPES, model_type="mixtral", num_local_experts=4, num_experts_per_tok=2),
        image_token_id=IMAGE_TOKEN,
        moe=MoeSpec(aux_loss_coef=0.1),
    )
    torch.manual_seed(0)
    model = build_model(spec).eval()
    assert model.language_model.router_aux_loss_coef == model.config.text_config.router_aux_loss_coef == 0.1
    input_ids = llava_prompt(model)
    output = model(input_ids=input_ids, pixel_values=pixels(1), labels=input_ids)
    expected = shifted_cross_entropy(output.logits, input_ids) + 0.1 * output.aux_loss
    torch.testing.assert_close(output.loss, expected, atol=1e-5, rtol=1e-5)
    output.loss.backward()
    assert all(router.weight.grad is not None and router.weight.grad.abs().sum() > 0 for router in routers(model))


# ---- LoRA --------------------------------------------------------------------------------------


def lora_stage(dropout: float = 0.0) -> StageConfig:
    """The finetune stage with small LoRA adapters (default targets), resolved."""
    stage = StageConfig(name="finetune", lora=LoraConfig(enabled=True, r=4, alpha=8, dropout=dropout))
    return resolve_config(TrainConfig(stage=stage)).stage


@pytest.mark.parametrize("text", ["llama", "qwen2"])
def test_lora_reaches_the_experts_and_trains_the_routers_whole(text):
    moe = upcycled_llava(dense_llava(text), MoeSpec(upcycle=True, num_experts=4))
    stage = lora_stage()
    assert expert_parameters(moe, stage.lora.target_modules) == [
        f"language_model.model.layers.{layer}.mlp.experts.{name}"
        for layer in (0, 1)
        for name in ("gate_up_proj", "down_proj")
    ]
    assert router_modules(moe) == [f"language_model.model.layers.{layer}.mlp.gate" for layer in (0, 1)]
    freeze_for_stage(moe, stage)
    wrapped = apply_lora(moe, stage)
    trainable = {name for name, parameter in wrapped.named_parameters() if parameter.requires_grad}
    expert_adapters = {name for name in trainable if ".experts." in name and "lora_" in name}
    # an adapter on each fused expert weight of every layer, with a rank-4 pair per expert inside it
    wrapped_weights = {
        (name.split(".layers.")[1].split(".")[0], module.parameter_name)
        for name, module in wrapped.named_modules()
        if type(module).__name__ == "ParamWrapper"
    }
    assert wrapped_weights == {(layer, weight) for layer in ("0", "1") for weight in ("gate_up_proj", "down_proj")}
    assert len(expert_adapters) == 2 * 2 * 2  # lora_A and lora_B of two weights in two layers
    assert all(wrapped.get_parameter(name).shape[0] == 4 * 4 for name in expert_adapters if ".lora_A." in name)
    assert not any("lora_" in name and ".gate." in name for name in trainable)  # no adapter on a router
    router_copies = {name for name in trainable if ".mlp.gate." in name}
    assert len(router_copies) == 2 and all("modules_to_save" in name for name in router_copies)
    assert any("self_attn.q_proj.lora_A" in name for name in trainable)
    assert not any("shared_expert." in name for name in trainable)  # an upcycled Qwen2-MoE's is zero-width
    # the adapters start at zero: the wrapped model is still the dense model's function
    dense = dense_llava(text)
    input_ids = llava_prompt(dense)
    with torch.no_grad():
        expected = dense(input_ids=input_ids, pixel_values=pixels(1)).logits
        torch.testing.assert_close(
            wrapped(input_ids=input_ids, pixel_values=pixels(1)).logits, expected, atol=1e-5, rtol=1e-5
        )
    wrapped.train()
    wrapped(input_ids=input_ids, pixel_values=pixels(1), labels=input_ids).loss.backward()
    grads = {name: parameter.grad for name, parameter in wrapped.named_parameters() if name in expert_adapters}
    assert all(grad is not None for grad in grads.values())
    assert any(grad.abs().sum() > 0 for name, grad in grads.items() if "lora_B" in name)


def test_lora_on_experts_needs_no_dropout():
    moe = upcycled_llava(dense_llava(), MoeSpec(upcycle=True, num_experts=4))
    stage = lora_stage(dropout=0.05)
    freeze_for_stage(moe, stage)
    with pytest.raises(ValueError, match="stage.lora.dropout=0"):
        apply_lora(moe, stage)
    attention_only = copy.deepcopy(stage)
    attention_only.lora.target_modules = ["q_proj", "v_proj"]
    wrapped = apply_lora(moe, attention_only)
    assert not any(".experts." in name and "lora_" in name for name, _ in wrapped.named_parameters())


# ---- a tiny training run -----------------------------------------------------------------------


class LoggedValues(TrainerCallback):
    """Every dict the Trainer logs."""

    def __init__(self):
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs or {}))


@pytest.fixture(scope="module")
def upcycled_run(tmp_path_factory):
    """configs/tiny/finetune.yaml with an upcycled 4-expert decoder, 3 steps on solid colours."""
    folder = tmp_path_factory.mktemp("moe_run")
    names = [list(COLOURS)[i % len(COLOURS)] for i in range(12)]
    samples = [
        Sample(f"s{i}", "<image>\nWhat color is it?", f"It is {name}.", f"{i}.png", COLOURS[name], (40, 32))
        for i, name in enumerate(names)
    ]
    data = write_llava_data(folder / "data", samples)
    config = tiny_recipe(
        "finetune",
        data,
        folder / "run",
        "model.connector_weights=null",
        "model.moe.upcycle=true",
        "model.moe.num_experts=4",
        "model.moe.aux_loss_coef=0.02",
        "optimization.max_steps=3",
        "optimization.global_batch_size=4",
        "optimization.per_device_batch_size=4",
        "output.save_steps=0",
        "output.plot=false",
    )
    logged, watch = LoggedValues(), WeightSnapshots()
    result = run_training(config, callbacks=[logged, watch])
    return result, logged, watch


def test_upcycled_training_run_saves_an_moe(upcycled_run):
    result, _, watch = upcycled_run
    assert result.global_step == 3 and all(torch.isfinite(torch.tensor(loss)) for _, loss in result.losses)
    loaded = LlavaKitForCausalLM.from_pretrained(result.model_path)
    text = loaded.config.text_config
    assert isinstance(loaded.language_model, MixtralForCausalLM)
    assert (text.model_type, text.num_local_experts, text.num_experts_per_tok, text.router_aux_loss_coef) == (
        "mixtral",
        4,
        2,
        0.02,
    )
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, watch.after[name]), name
    # the experts and routers trained: the experts are no longer copies of one another
    experts = watch.after["language_model.model.layers.0.mlp.experts.down_proj"]
    assert not torch.equal(experts[0], experts[1])
    router = "language_model.model.layers.0.mlp.gate.weight"
    assert not torch.equal(watch.after[router], watch.before[router])


def test_balance_loss_is_logged_in_training(upcycled_run):
    _, logged, _ = upcycled_run
    training_logs = [entry for entry in logged.logs if "loss" in entry]
    assert training_logs and all(entry.get("aux_loss", 0) > 0 for entry in training_logs)


def test_lora_run_on_an_upcycled_decoder_merges_into_an_moe(tmp_path):
    samples = [
        Sample(f"s{i}", "<image>\nWhat color is it?", "It is red.", f"{i}.png", COLOURS["red"]) for i in range(4)
    ]
    watch = WeightSnapshots()
    result = run_training(
        tiny_recipe(
            "finetune",
            write_llava_data(tmp_path / "data", samples),
            tmp_path / "run",
            "model.connector_weights=null",
            "model.moe.upcycle=true",
            "model.moe.num_experts=4",
            "stage.lora.enabled=true",
            "stage.lora.r=4",
            "stage.lora.alpha=8",
            "stage.lora.dropout=0",
            "output.merge_lora=true",
            "optimization.max_steps=2",
            "optimization.global_batch_size=4",
            "optimization.per_device_batch_size=4",
            "output.save_steps=0",
            "output.plot=false",
        ),
        callbacks=[watch],
    )
    merged = LlavaKitForCausalLM.from_pretrained(result.model_path)
    assert result.model_path == tmp_path / "run" / "merged"
    assert isinstance(merged.language_model, MixtralForCausalLM)
    experts = merged.state_dict()["language_model.model.layers.0.mlp.experts.gate_up_proj"]
    assert not torch.equal(experts[0], experts[1])  # each expert got its own adapter, merged in
    router = [name for name in watch.after if name.endswith("layers.0.mlp.gate.modules_to_save.default.weight")]
    assert len(router) == 1 and not torch.equal(watch.after[router[0]], watch.before[router[0]])
    assert torch.equal(merged.state_dict()["language_model.model.layers.0.mlp.gate.weight"], watch.after[router[0]])

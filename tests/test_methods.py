"""Every fine-tuning method on the tiny model: what learns and what stays bit-identical, adapter
invariants, regularisation switches, optimizers and schedules, and bad method options."""

import json
import sys

import pytest
import torch
from conftest import arithmetic_rows
from safetensors.torch import load_file

from tuneforge.data.batches import collate
from tuneforge.errors import UserError
from tuneforge.methods import apply_method
from tuneforge.methods.model_parts import trainable_parameters
from tuneforge.models.loader import load_model
from tuneforge.tasks.chat import encode
from tuneforge.train.checkpoint import list_checkpoints
from tuneforge.train.load import load_for_method
from tuneforge.train.loss import LossModel
from tuneforge.train.run import train

METHODS = ["full", "freeze", "gradual_unfreeze", "lora", "rslora", "dora", "qlora", "prompt_tuning"]
ADAPTER_METHODS = ("lora", "rslora", "dora", "qlora", "prompt_tuning")  # saved as a PEFT adapter


def _batch(tokenizer, n=4):
    return collate([encode({"id": str(i), **r}, tokenizer, 64) for i, r in enumerate(arithmetic_rows(n))],
                   tokenizer.pad_token_id)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_its_parameters_and_nothing_else(method, tiny_recipe, tiny_model, tmp_path):
    recipe = tiny_recipe(method=method, freeze={"trainable_blocks": 1, "unfreeze_every": 3},
                         prompt_tuning={"virtual_tokens": 4, "init_text": "Add the numbers."},
                         train={"learning_rate": 1e-2, "early_stopping_patience": None})
    run = train(recipe, tmp_path / "runs")
    plan = json.loads((run / "plan.json").read_text())
    assert 0 < plan["trainable_params"] <= plan["total_params"]
    learned = load_file(list_checkpoints(run)[-1] / "trainable.safetensors")
    initial = trainable_parameters(load_for_method(tiny_model, recipe, "cpu"))
    assert learned.keys() == initial.keys()
    assert sum(v.numel() for v in learned.values()) == plan["trainable_params"]
    if method == "gradual_unfreeze":  # 6 steps, one more block every 3: block 0 never learned
        never = {k for k in learned if ".layers.0." in k}
        assert never and all(torch.equal(learned[k], initial[k]) for k in never)
        learned = {k: v for k, v in learned.items() if k not in never}
    unchanged = [k for k in learned if torch.equal(learned[k], initial[k].detach().to(learned[k].dtype))]
    assert not unchanged, f"{method}: trainable parameters that did not move: {unchanged[:3]}"
    if method in ADAPTER_METHODS:
        assert (run / "model" / "adapter_config.json").is_file()
        assert not (run / "model" / "model.safetensors").exists()
    else:  # the saved full model: exactly the non-trainable weights are bit-identical to the base
        base, tuned = load_model(tiny_model), load_model(run / "model")
        for name, p in base.named_parameters():
            assert torch.equal(p, tuned.get_parameter(name)) == (name not in learned), name


def _greedy(model, tokenizer, ids: torch.Tensor, steps: int) -> str:
    """Greedy decoding the slow way: the whole sequence through the model at every step, no cache."""
    out = ids
    for _ in range(steps):
        token = model(input_ids=out, attention_mask=torch.ones_like(out)).logits[0, -1].argmax()
        if token == tokenizer.eos_token_id:
            break
        out = torch.cat([out, token.view(1, 1)], dim=1)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def test_adapter_runs_generate_with_and_without_their_adapter(tiny_recipe, tiny_model, tiny_tokenizer, tmp_path):
    """Generation through the adapter (KV cache, soft prompt in front) equals greedy decoding without a
    cache; with the adapter switched off the model is the untouched base model again, at every position
    of the tuned answer."""
    from tuneforge.inference.generate import generate_batch
    from tuneforge.inference.run_models import RunModels
    from tuneforge.models.chat_template import render_prompt

    prompt = render_prompt(tiny_tokenizer, [{"role": "user", "content": "What is 3 plus 3?"}])
    plain = load_model(tiny_model).eval()
    for method in ("dora", "prompt_tuning"):
        run = train(tiny_recipe(method=method, name=method, prompt_tuning={"virtual_tokens": 4},
                                train={"learning_rate": 5e-2, "max_steps": 12}), tmp_path / "runs")
        models = RunModels(run)
        enc = models.tokenizer([prompt], return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            [tuned] = generate_batch(models.tuned, models.tokenizer, [prompt], 12, 1)
            assert tuned == _greedy(models.tuned, models.tokenizer, enc["input_ids"], 12), method
            answer = models.tokenizer([prompt + tuned], return_tensors="pt", add_special_tokens=False)
            tuned_logits = models.tuned(**answer).logits
            with models.base() as base:
                base_logits = base(**answer).logits
            plain_logits = plain(**answer).logits
        if method == "dora":
            assert tuned.strip(), "the tuned model answers nothing: the comparisons above would be empty"
        torch.testing.assert_close(base_logits, plain_logits, rtol=1e-5, atol=1e-6)  # removable
        assert not torch.allclose(tuned_logits[0, -1], base_logits[0, -1], atol=1e-3), method  # and applied


def test_gradient_checkpointing_gives_the_same_gradient(tiny_model, tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    grads = []
    for checkpointing in (False, True):
        model = load_model(tiny_model).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        s, n, _ = LossModel(model)(batch)
        (s / n).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-7)


def test_compiled_blocks_train_as_eager_ones_do(tiny_recipe, tmp_path):
    """torch.compile of the blocks changes kernels, not the arithmetic: the same steps log the same
    losses within float32 reassociation (measured differences are ~1e-7; 1e-5 relative allowed)."""
    losses = {}
    for compiled in (True, False):
        run = train(tiny_recipe(method="full", name=f"compile-{compiled}",
                                train={"compile": compiled, "max_steps": 3, "eval_every": 3, "save_every": 3,
                                       "learning_rate": 1e-2}), tmp_path / "runs")
        losses[compiled] = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()
                            if '"loss"' in line]
    assert len(losses[True]) == 3
    assert losses[True] == pytest.approx(losses[False], rel=1e-5)
    assert losses[False][0] != losses[False][-1]  # the steps learnt: a later loss is compared too


def test_lora_with_b_zero_equals_the_base_model(tiny_recipe, tiny_model, tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    base = load_model(tiny_model).eval()
    for method in ("lora", "rslora"):
        adapted = apply_method(load_model(tiny_model), tiny_recipe(method=method)).eval()
        with torch.no_grad():
            assert torch.equal(adapted(**batch).logits, base(**batch).logits), method


def test_merged_lora_equals_unmerged_outputs(tiny_recipe, tiny_model, tiny_tokenizer, tmp_path):
    from peft import PeftModel

    run = train(tiny_recipe(method="dora", train={"learning_rate": 1e-2}), tmp_path / "runs")
    batch = _batch(tiny_tokenizer)
    tuned = PeftModel.from_pretrained(load_model(tiny_model), run / "model").eval()
    with torch.no_grad():
        unmerged = tuned(**batch).logits
        merged = tuned.merge_and_unload()(**batch).logits
        base = load_model(tiny_model)(**batch).logits
    assert not torch.allclose(unmerged, base, atol=1e-4)  # the adapter really changes the output
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-5)


def test_freeze_by_module_pattern(tiny_recipe, tiny_model):
    recipe = tiny_recipe(method="freeze", freeze={"frozen_modules": [r"embed_tokens", r"layers\.[01]\."]})
    model = apply_method(load_model(tiny_model), recipe)
    learning = trainable_parameters(model)
    assert learning and all(".layers.2." in n or n == "model.norm.weight" for n in learning)


def test_dropout_override_reaches_the_model(tiny_recipe, tiny_model):
    model = load_for_method(tiny_model, tiny_recipe(method="full", model={"name": str(tiny_model), "dropout": 0.25}), "cpu")
    assert model.config.attention_dropout == 0.25
    assert model.model.layers[0].self_attn.attention_dropout == 0.25


def test_label_smoothing_applies_to_training_loss_only(tiny_model, tiny_tokenizer):
    batch = _batch(tiny_tokenizer)
    plain, smoothed = LossModel(load_model(tiny_model)), LossModel(load_model(tiny_model), label_smoothing=0.1)
    with torch.no_grad():
        assert smoothed.train()(batch)[0] > plain.train()(batch)[0]
        assert torch.equal(smoothed.eval()(batch)[0], plain.eval()(batch)[0])


@pytest.mark.parametrize("optimizer", ["adamw", "sgd", "adafactor"])
def test_each_optimizer_lowers_the_loss(optimizer, tiny_recipe, tmp_path):
    lr = {"adamw": 3e-3, "sgd": 0.3, "adafactor": 3e-2}[optimizer]
    run = train(tiny_recipe(method="full", train={"optimizer": optimizer, "learning_rate": lr, "max_steps": 20,
                                                  "eval_every": 20, "save_every": 20, "schedule": "constant"}),
                tmp_path / "runs")
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert sum(losses[-4:]) / 4 < 0.85 * sum(losses[:4]) / 4, optimizer


def test_schedules_warm_up_then_take_their_shape(tiny_recipe):
    from tuneforge.train.optim import make_optimizer, make_schedule

    def lrs(schedule):
        recipe = tiny_recipe(train={"schedule": schedule, "learning_rate": 1.0, "min_lr_ratio": 0.1})
        optimizer = make_optimizer({"w": torch.nn.Parameter(torch.zeros(2, 2))}, recipe)
        scheduler = make_schedule(optimizer, recipe, warmup_steps=4, total_steps=14)
        out = []
        for _ in range(14):
            out.append(round(scheduler.get_last_lr()[0], 4))
            optimizer.step()
            scheduler.step()
        return out

    assert lrs("constant")[:6] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0] and lrs("constant")[-1] == 1.0
    assert lrs("linear")[4:] == [1.0, 0.91, 0.82, 0.73, 0.64, 0.55, 0.46, 0.37, 0.28, 0.19]
    cosine = lrs("cosine")
    assert cosine[4] == 1.0 and cosine[9] == 0.55 and all(a > b for a, b in zip(cosine[4:], cosine[5:]))


@pytest.mark.parametrize("sections, message", [
    ({"method": "lora", "lora": {"target_modules": ["q_proj", "qkv"]}},
     "lora.target_modules: 'qkv' matches no linear module of this model. Its linear modules are: down_proj"),
    ({"method": "freeze", "freeze": {"trainable_blocks": 9}}, "freeze.trainable_blocks: 9 is more than the model's 3 blocks"),
    ({"method": "freeze", "freeze": {"frozen_modules": ["encoder"]}}, "freeze.frozen_modules: 'encoder' matches no parameter"),
    ({"method": "prompt_tuning", "train": {"packing": True}}, "train.packing: prompt_tuning puts its soft prompt"),
])
def test_bad_method_options_are_clear_errors(sections, message, tiny_recipe, tmp_path):
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(".", r"\.")):
        train(tiny_recipe(**sections), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_qlora_without_bitsandbytes_says_how_to_install(tiny_recipe, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as if it were not installed
    with pytest.raises(UserError, match="method: qlora needs the bitsandbytes package"):
        train(tiny_recipe(method="qlora"), tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_adapter_bases_are_kept_in_the_autocast_dtype_with_identical_results(method, tiny_recipe, tiny_model,
                                                                              tiny_tokenizer):
    """Under bf16 autocast the frozen linear weights, the output head's included, are stored in bf16
    (autocast and the loss would cast them on every forward anyway): same loss and adapter gradients as
    fp32 storage, half the weight memory; the embeddings the head was tied to stay fp32."""
    recipe = tiny_recipe(method=method, prompt_tuning={"virtual_tokens": 4, "init_text": None})
    half, plain = (load_for_method(tiny_model, recipe, "cpu", precision) for precision in ("bf16", "fp32"))
    assert plain.get_output_embeddings().weight is plain.get_input_embeddings().weight  # tied
    for name, p in half.named_parameters():
        frozen_linear = not p.requires_grad and name.endswith(("proj.weight", "lm_head.weight")) or "base_layer" in name
        assert p.dtype == (torch.bfloat16 if frozen_linear else torch.float32), name
    assert half.get_output_embeddings().weight.dtype == torch.bfloat16
    assert half.get_input_embeddings().weight.dtype == torch.float32
    batch = _batch(tiny_tokenizer)
    results = []
    for model in (half, plain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s, n, _ = LossModel(model)(batch)
        (s / n).backward()
        results.append((s.detach(), {k: p.grad for k, p in trainable_parameters(model).items()}))
    assert torch.equal(results[0][0], results[1][0])
    assert results[0][1].keys() == results[1][1].keys()
    for k in results[0][1]:
        torch.testing.assert_close(results[0][1][k], results[1][1][k], rtol=0, atol=0)

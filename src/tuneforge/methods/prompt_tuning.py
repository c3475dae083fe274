"""prompt_tuning: a learnt soft prompt in front of every example, the model frozen."""

from tuneforge.methods.base import Method, peft_task_type, register


@register
class PromptTuning(Method):
    name = "prompt_tuning"
    learning_rate = 3e-2  # soft prompts need the largest step
    adapter = True
    half_base = True
    mergeable = False  # a soft prompt is not a weight change
    packing = False  # packed examples would share one soft prompt
    servable = False  # its soft prompt does not combine with the server's shared KV cache

    def apply(self, model, recipe, model_dir=None, head=()):
        from peft import PromptTuningConfig, PromptTuningInit, get_peft_model

        pt = recipe.prompt_tuning
        by_text = bool(pt.init_text) and model_dir is not None
        config = PromptTuningConfig(
            task_type=peft_task_type(model), num_virtual_tokens=pt.virtual_tokens,
            prompt_tuning_init=PromptTuningInit.TEXT if by_text else PromptTuningInit.RANDOM,
            prompt_tuning_init_text=pt.init_text if by_text else None,
            tokenizer_name_or_path=str(model_dir) if by_text else None)
        return get_peft_model(model, config)

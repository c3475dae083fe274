"""`train.compile`: torch.compile of each transformer block, and `auto`, which compiles only where it
pays back within the run and keeps it only where it is measured faster.

Compiling the blocks (one graph serves them all) fuses the small operations around the matmuls: norms,
rotary embeddings, casts, the LoRA scaling. Measured with benchmarks/train_ab.py on this project's 2-core
CPU, bundled model, short examples: +8 to +9% tokens/s for LoRA, +3 to +4% for full fine-tuning; a
1,000-step demo run measured +13% for 44 s of compiling with Inductor's cache empty (7 s warm). A short run never earns that back, a
long one saves minutes. So `auto` times a few eager steps, compiles when the expected saving over the
rest of the run beats a cold compile, then times a few compiled steps against the eager ones and goes
back to eager when they are not faster (a model whose blocks break into many graphs, a device where the
fusions do not pay). Each decision is printed and written to metrics.jsonl.
"""

import statistics

import torch

PROBE_STEPS = 3  # steps timed on each side of the decision, each after one untimed step
EXPECTED_GAIN = 0.05  # below LoRA's measured gain, above full fine-tuning's: the compiled probe has the last word
COMPILE_SECONDS = 60.0  # a cold compile of the bundled model's blocks on this CPU (2 cores)


def compile_blocks(blocks) -> None:
    for block in blocks:
        block.compile(dynamic=True)  # lengths vary from step to step: one dynamic graph, not one per length


def uncompile_blocks(blocks) -> None:
    for block in blocks:
        block._compiled_call_impl = None  # what Module.compile set; clearing it restores the eager call


class AutoCompile:
    """`train.compile: auto` for one training process. The loop reports every step's time and tokens
    to `after_step`, which acts at most twice and returns a metrics record when it does."""

    def __init__(self, blocks):
        self.blocks = blocks
        self.phase = "eager"  # eager -> compiled -> decided
        self.untimed = 1
        self.seconds: dict[str, list[float]] = {"eager": [], "compiled": []}  # a timed step each
        self.rates: dict[str, list[float]] = {"eager": [], "compiled": []}  # its tokens / seconds
        self.compile_seconds = 0.0

    def after_step(self, step: int, seconds: float, tokens: int, remaining_steps: int) -> dict | None:
        if self.phase == "decided":
            return None
        if self.untimed:  # the first eager step warms caches; the first compiled one compiles
            self.untimed -= 1
            if self.phase == "compiled":
                self.compile_seconds = max(0.0, seconds - statistics.median(self.seconds["eager"]))
            return None
        self.rates[self.phase].append(tokens / seconds)
        self.seconds[self.phase].append(seconds)
        if len(self.rates[self.phase]) < PROBE_STEPS:
            return None
        eager = statistics.median(self.rates["eager"])
        if self.phase == "eager":
            return self._decide_to_compile(step, eager, remaining_steps)
        compiled = statistics.median(self.rates["compiled"])
        self.phase = "decided"
        record = {"step": step, "eager_tokens_per_s": round(eager, 1), "compiled_tokens_per_s": round(compiled, 1),
                  "compile_seconds": round(self.compile_seconds, 1)}
        change = (f"{compiled:.0f} tokens/s compiled against {eager:.0f} eager ({compiled / eager - 1:+.0%}), "
                  f"{self.compile_seconds:.0f} s to compile")
        if compiled > eager:
            saved = statistics.median(self.seconds["eager"]) * (1 - eager / compiled)  # a step, at equal tokens
            return record | {"compile": "on", "reason": f"keeping the compiled blocks: {change}, paid back after "
                                                        f"{self.compile_seconds / saved:.0f} more steps"}
        uncompile_blocks(self.blocks)
        return record | {"compile": "off", "reason": f"back to eager: {change}"}

    def _decide_to_compile(self, step: int, eager: float, remaining_steps: int) -> dict:
        left = remaining_steps * statistics.median(self.seconds["eager"])
        record = {"step": step, "eager_tokens_per_s": round(eager, 1)}
        saving = f"{EXPECTED_GAIN:.0%} of the remaining {remaining_steps} steps ({left / 60:.1f} min eager)"
        if left * EXPECTED_GAIN <= COMPILE_SECONDS or remaining_steps <= 2 * PROBE_STEPS:
            self.phase = "decided"
            return record | {"compile": "off",
                             "reason": f"staying eager: {saving} would not pay back a ~{COMPILE_SECONDS:.0f} s compile"}
        # An optimisation must never stop a run that eager execution would finish: frames that fail to
        # compile (no C++ compiler, an unsupported operation) run eagerly, and the probe sees no gain.
        torch._dynamo.config.suppress_errors = True
        compile_blocks(self.blocks)
        self.phase, self.untimed = "compiled", 1
        return record | {"compile": "trying",
                         "reason": f"compiling the transformer blocks: {saving} pays back a ~{COMPILE_SECONDS:.0f} s "
                                   f"compile; timing {PROBE_STEPS} compiled steps against the eager ones"}

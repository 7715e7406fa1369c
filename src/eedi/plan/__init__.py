"""``eedi plan``: the GPU memory each stage of a config needs, before any download.

Each stage's model is built from its architecture config on the meta device (shapes, no weights:
:mod:`eedi.plan.arch`), and :mod:`eedi.plan.memory` adds up weights at the configured precision, LoRA and
optimizer state, activations and the vLLM KV cache. :mod:`eedi.plan.stages` compares the per-GPU peaks with
the GPUs given or visible, and :mod:`eedi.plan.report` prints the table.
"""

from eedi.plan.report import render
from eedi.plan.stages import Gpus, Plan, StagePlan, parse_gpus, plan_config, visible_gpus

__all__ = ["Gpus", "Plan", "StagePlan", "parse_gpus", "plan_config", "render", "visible_gpus"]

"""The Trainer's steps as a console bar: a callback, kept apart from :mod:`eedi.progress` so that importing the
bars does not import transformers (every stage process imports them, and transformers with peft costs seconds)."""

from __future__ import annotations

from tqdm.auto import tqdm
from transformers import TrainerCallback

from eedi.progress import bar


class TrainerProgress(TrainerCallback):
    """Training steps as one bar on the console (the Trainer's own bar and log dicts go to the stage log)."""

    def __init__(self, desc: str):
        self.desc = desc
        self._bar: tqdm | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._bar = bar(desc=self.desc, total=state.max_steps, initial=state.global_step, unit="step")

    def on_step_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.update(state.global_step - self._bar.n)
            loss = next((e["loss"] for e in reversed(state.log_history) if "loss" in e), None)
            if loss is not None:
                self._bar.set_postfix(loss=f"{loss:.3f}", refresh=False)

    def on_train_end(self, args, state, control, **kwargs):
        if self._bar is not None:
            self._bar.close()
            self._bar = None

"""The study's one stopping rule: when training stops and which epoch's weights are kept, decided
by one object, live during training (`study.train.Convergence`), replayed on recorded histories
(the sweep's replay table, the records test) and stated in the report (`definition`).

    rule = StoppingRule.from_config(record["train_config"])   # or a `TrainConfig`
    rule.replay(record["history"])
    # -> {"epoch": 11, "stop_reason": "converged", "kept_epoch": 10, "selected_by": "exact match"}
    rule.definition()          # the report's one-sentence definition of converged

A history is the list of epoch rows `study.train.GreedyValidation` appends: `val_loss` (nats per
target character, teacher-forced), `val_seq_acc` and `val_char_acc` (greedy decoding, shares),
`val_seq_acc_by_length` (exact match per training length, keys are lengths as strings) and
`examples_seen`.

The rule.  Training stops after an epoch whose validation exact match reaches `target_accuracy`
("target_reached"), or once over the last `patience` epochs neither the best validation loss fell
by more than `loss_tolerance` nor the best exact match at any training length rose by more than
`accuracy_tolerance`, each against its best before that stretch ("converged"); otherwise the
budget ends it ("budget").  The weights kept are those of the first epoch with the best exact
match (character accuracy breaking ties) or, for a model whose validation exact match never rose
above `accuracy_tolerance` (0%, or a lucky example or two), of the first epoch with the lowest
validation loss.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping


def last_stretch(history: list[dict], stretch_epochs: int) -> dict | None:
    """How far the convergence measures moved over the last `stretch_epochs` epochs: the best of
    those epochs against the best before them.

    Returns {"val_loss": the fall of the best validation loss in nats per target character
    (positive: it improved), "val_seq_acc_by_length": the largest rise of best exact match at
    one training length (a share; positive: it improved), "length": that length}, or None
    when the history is not longer than the stretch."""
    if len(history) <= stretch_epochs:
        return None
    before, stretch = history[:-stretch_epochs], history[-stretch_epochs:]
    loss_gain = min(r["val_loss"] for r in before) - min(r["val_loss"] for r in stretch)
    gains = {
        L: max(r["val_seq_acc_by_length"][L] for r in stretch) - max(r["val_seq_acc_by_length"][L] for r in before)
        for L in history[-1]["val_seq_acc_by_length"]
    }
    length = max(gains, key=lambda L: (gains[L], -int(L)))
    return {"val_loss": float(loss_gain), "val_seq_acc_by_length": float(gains[length]), "length": int(length)}


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """The stopping rule's parameters and its decisions (see the module docstring).

    Args:
        patience_examples: training examples over which convergence is judged (rounded up to
            whole epochs: `patience`).
        epoch_examples: training examples per epoch.
        loss_tolerance: nats per target character the best validation loss must fall by over
            the stretch to count as learning.
        accuracy_tolerance: share of exact match at one training length the best must rise by
            over the stretch to count as learning.
        target_accuracy: validation exact match (a share) that ends training at once.
        max_examples: the budget, in training examples.
    """

    patience_examples: int
    epoch_examples: int
    loss_tolerance: float
    accuracy_tolerance: float
    target_accuracy: float
    max_examples: int

    @classmethod
    def from_config(cls, cfg: Any, **overrides) -> "StoppingRule":
        """The rule of a `study.config.TrainConfig` or of its dict in a record (`train_config`).

        `overrides` replace fields (e.g. `patience_examples=20000` to replay another stretch).
        Raises KeyError when the dict lacks a field the rule needs (records of an earlier rule).
        """
        get = (lambda name: cfg[name]) if isinstance(cfg, Mapping) else lambda name: getattr(cfg, name)
        return cls(
            **{f.name: overrides[f.name] if f.name in overrides else get(f.name) for f in dataclasses.fields(cls)}
        )

    @property
    def patience(self) -> int:
        """Epochs over which convergence is judged: patience_examples / epoch_examples, rounded up."""
        return math.ceil(self.patience_examples / self.epoch_examples)

    def stretch(self, history: list[dict]) -> dict | None:
        """How far the measures moved over the last stretch (`last_stretch`); None while the
        history is not longer than the stretch."""
        return last_stretch(history, self.patience)

    def converged(self, history: list[dict]) -> bool:
        """True when neither measure moved by more than its tolerance over the last stretch."""
        stretch = self.stretch(history)
        return bool(
            stretch
            and stretch["val_loss"] <= self.loss_tolerance
            and stretch["val_seq_acc_by_length"] <= self.accuracy_tolerance
        )

    def stop_reason(self, history: list[dict]) -> str | None:
        """Why training stops after the last epoch of `history`: "target_reached",
        "converged", or None (it goes on while the budget allows)."""
        if history and history[-1]["val_seq_acc"] >= self.target_accuracy:
            return "target_reached"
        return "converged" if self.converged(history) else None

    @staticmethod
    def selection_key(row: dict) -> tuple[float, float]:
        """What the kept epoch maximises: exact match, then character accuracy."""
        return (row["val_seq_acc"], row["val_char_acc"])

    def selected_by(self, history: list[dict]) -> str:
        """ "exact match", or "validation loss" when validation exact match never rose above
        `accuracy_tolerance` (so a lucky example or two never picks the weights)."""
        if all(r["val_seq_acc"] <= self.accuracy_tolerance for r in history):
            return "validation loss"
        return "exact match"

    def kept_epoch(self, history: list[dict]) -> int:
        """The epoch (1-based) whose weights are kept: the first with the best selection key, or
        with the lowest validation loss (`selected_by`); 0 for an empty history."""
        if not history:
            return 0
        if self.selected_by(history) == "validation loss":
            return min(range(len(history)), key=lambda i: history[i]["val_loss"]) + 1
        return max(range(len(history)), key=lambda i: (self.selection_key(history[i]), -i)) + 1

    def replay(self, history: list[dict]) -> dict:
        """Where training with this rule would have stopped on a recorded `history` (exact: the
        rule only decides when to stop; updates and the learning rate do not depend on it).

        Returns {"epoch": the last epoch trained (1-based), "stop_reason": "target_reached",
        "converged" or "budget" (also for a history cut short, e.g. by divergence),
        "kept_epoch", "selected_by"}.  Only epochs that were trained can be replayed: a rule
        that would have gone on past the recorded history stops at its end ("budget")."""
        for n in range(1, len(history) + 1):
            reason = self.stop_reason(history[:n])
            if reason:
                break
        else:
            n, reason = len(history), "budget"
        return {
            "epoch": n,
            "stop_reason": reason,
            "kept_epoch": self.kept_epoch(history[:n]),
            "selected_by": self.selected_by(history[:n]),
        }

    def definition(self) -> str:
        """The report's one-sentence definition of converged, from the rule's parameters."""
        return (
            "A cell converged when validation exact match reached the target, or when over the last "
            f"{self.patience_examples} training examples neither its validation loss fell by more than "
            f"{self.loss_tolerance} nats per character nor its validation exact match at any training length rose by "
            f"more than {100 * self.accuracy_tolerance:g} points, at a learning rate that only a plateau lowers; "
            f"a cell that reached the {self.max_examples}-example budget did not converge."
        )

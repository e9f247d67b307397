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
by more than `loss_tolerance` nor the best exact match pooled over any band of `accuracy_band`
consecutive training lengths rose by more than its threshold (the larger of `accuracy_tolerance`
and `accuracy_z` binomial standard errors of the difference, `last_stretch`), each against its
best before that stretch ("converged"); otherwise the budget ends it ("budget").  Band 1 and z 0
is the rule's earlier form: a tolerance at every training length.  The weights kept are those of the first epoch with the best exact
match (character accuracy breaking ties) or, for a model whose validation exact match never rose
above `accuracy_tolerance` (0%, or a lucky example or two), of the first epoch with the lowest
validation loss.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping


def length_bands(lengths: list[int], band: int) -> list[list[int]]:
    """The training lengths, sorted, in consecutive bands of `band` lengths (the last may be
    shorter): [4, 5, ..., 32] with band 8 -> [[4..11], [12..19], [20..27], [28..32]]."""
    lengths = sorted(lengths)
    return [lengths[i : i + band] for i in range(0, len(lengths), band)]


def last_stretch(
    history: list[dict],
    stretch_epochs: int,
    band: int,
    z: float,
    tolerance: float,
    n_per_length: int,
) -> dict | None:
    """How far the convergence measures moved over the last `stretch_epochs` epochs: the best of
    those epochs against the best before them.

    Exact match is pooled over bands of `band` consecutive training lengths (`length_bands`,
    up to `n_per_length` validation examples at each), and a band's rise counts as learning only
    above its threshold: the larger of `tolerance` and z * sqrt(2 p (1 - p) / n), p the band's
    best before the stretch and n = n_per_length x its lengths.  That is a threshold scaled like
    the binomial standard error of the difference of two independent shares, a heuristic rather
    than a test: the validation set is fixed, so two epochs are scored on the same examples (their
    difference varies less), and a best over epochs is compared with a best over epochs.  The
    `tolerance` floor matters where that error vanishes, at a band near 0% (one lucky example
    is not learning); near 100% no rise can exceed it anyway.  band 1 and z 0 is a tolerance at
    every single length.

    Returns {"val_loss": the fall of the best validation loss in nats per target character
    (positive: it improved), "val_seq_acc_by_length": the rise of the best exact match of the
    band that rose most above its threshold (a share; positive: it improved), "length": that
    band's first length, "lengths": its first and last length, "threshold": its threshold (a
    share)}, or None when the history is not longer than the stretch."""
    if len(history) <= stretch_epochs:
        return None
    before, stretch = history[:-stretch_epochs], history[-stretch_epochs:]
    loss_gain = min(r["val_loss"] for r in before) - min(r["val_loss"] for r in stretch)

    def pooled(row: dict, lengths: list[int]) -> float:
        return sum(row["val_seq_acc_by_length"][str(L)] for L in lengths) / len(lengths)

    moves = []
    for lengths in length_bands([int(L) for L in history[-1]["val_seq_acc_by_length"]], band):
        best_before = max(pooled(r, lengths) for r in before)
        gain = max(pooled(r, lengths) for r in stretch) - best_before
        n = n_per_length * len(lengths)
        threshold = max(tolerance, z * math.sqrt(2 * best_before * (1 - best_before) / n))
        moves.append((gain - threshold, gain, threshold, lengths))
    _, gain, threshold, lengths = max(moves, key=lambda m: (m[0], -m[3][0]))
    return {
        "val_loss": float(loss_gain),
        "val_seq_acc_by_length": float(gain),
        "length": lengths[0],
        "lengths": [lengths[0], lengths[-1]],
        "threshold": float(threshold),
    }


@dataclasses.dataclass(frozen=True)
class StoppingRule:
    """The stopping rule's parameters and its decisions (see the module docstring).

    Args:
        patience_examples: training examples over which convergence is judged (rounded up to
            whole epochs: `patience`).
        epoch_examples: training examples per epoch.
        loss_tolerance: nats per target character the best validation loss must fall by over
            the stretch to count as learning.
        accuracy_tolerance: share of exact match the best of a band of training lengths must
            rise by over the stretch to count as learning, at least (the floor of the band's
            threshold).
        target_accuracy: validation exact match (a share) that ends training at once.
        max_examples: the budget, in training examples.
        accuracy_band: consecutive training lengths pooled into one band for the exact-match
            criterion (1: every length on its own).
        accuracy_z: binomial standard errors of the difference a band's rise must exceed
            (0: the tolerance alone).
        n_validation: validation examples per training length.
        min_learning_rate: the plateau schedule's floor; a stop there is reported as such
            (`at_floor`).

    Records of rules before bands (no `accuracy_band`, `accuracy_z`) replay with band 1 and
    z 0, the rule they were trained under.
    """

    patience_examples: int
    epoch_examples: int
    loss_tolerance: float
    accuracy_tolerance: float
    target_accuracy: float
    max_examples: int
    accuracy_band: int = 1
    accuracy_z: float = 0.0
    n_validation: int = 64
    min_learning_rate: float = 0.0

    @classmethod
    def from_config(cls, cfg: Any, **overrides) -> "StoppingRule":
        """The rule of a `study.config.TrainConfig` or of its dict in a record (`train_config`).

        `overrides` replace fields (e.g. `patience_examples=20000` to replay another stretch).
        Raises KeyError when the dict lacks a field the rule needs (records of an earlier rule),
        TypeError for an override that is not one of the rule's fields.
        """
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise TypeError(f"not fields of the stopping rule: {', '.join(sorted(unknown))}")

        def get(field: dataclasses.Field) -> Any:
            if field.name in overrides:
                return overrides[field.name]
            if not isinstance(cfg, Mapping):
                return getattr(cfg, field.name)
            if field.default is dataclasses.MISSING or field.name in cfg:
                return cfg[field.name]
            return field.default

        rule = cls(**{f.name: get(f) for f in dataclasses.fields(cls)})
        schedule = cfg.get("schedule", "constant") if isinstance(cfg, Mapping) else cfg.schedule
        # only the plateau schedule lowers the rate to a floor
        return rule if schedule == "plateau" else dataclasses.replace(rule, min_learning_rate=0.0)

    @property
    def patience(self) -> int:
        """Epochs over which convergence is judged: patience_examples / epoch_examples, rounded up."""
        return math.ceil(self.patience_examples / self.epoch_examples)

    def stretch(self, history: list[dict]) -> dict | None:
        """How far the measures moved over the last stretch (`last_stretch`); None while the
        history is not longer than the stretch."""
        return last_stretch(
            history, self.patience, self.accuracy_band, self.accuracy_z, self.accuracy_tolerance, self.n_validation
        )

    def still_moving(self, stretch: dict) -> list[str]:
        """Which measures of a last stretch (`last_stretch`'s dict, or a record's `last_stretch`)
        moved past their thresholds: "the loss", "exact match", both or none.  A record of the
        rule before bands has no "threshold": its tolerance stands in."""
        moves = (
            ("the loss", stretch["val_loss"] > self.loss_tolerance),
            ("exact match", stretch["val_seq_acc_by_length"] > stretch.get("threshold", self.accuracy_tolerance)),
        )
        return [name for name, moved in moves if moved]

    def converged(self, history: list[dict]) -> bool:
        """True when neither measure moved by more than its threshold over the last stretch."""
        stretch = self.stretch(history)
        return bool(stretch) and not self.still_moving(stretch)

    def at_floor(self, learning_rate: float | None) -> bool:
        """True when `learning_rate` (a cell's rate at its stop) is the schedule's floor: the
        schedule, not the model, may have ended the learning."""
        return bool(learning_rate and self.min_learning_rate and learning_rate <= self.min_learning_rate * 1.000001)

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
        if self.accuracy_band == 1 and not self.accuracy_z:
            accuracy = (
                f"its validation exact match at any training length rose by more than "
                f"{100 * self.accuracy_tolerance:g} points"
            )
        else:
            points = 100 * self.accuracy_tolerance
            accuracy = (
                f"its validation exact match pooled over any band of {self.accuracy_band} consecutive training "
                f"lengths (up to {self.accuracy_band * self.n_validation} validation examples) rose by more than "
                f"the larger of {self.accuracy_z:g} binomial standard errors of the difference and "
                f"{points:g} point{'' if points == 1 else 's'}"
            )
        floor = (
            f"; a cell whose learning rate was at the schedule's floor ({self.min_learning_rate:g}) when it "
            "stopped is listed as such"
            if self.min_learning_rate
            else ""
        )
        return (
            "A cell converged when validation exact match reached the target, or when over the last "
            f"{self.patience_examples} training examples neither its validation loss fell by more than "
            f"{self.loss_tolerance} nats per character nor {accuracy}, at a learning rate that only a plateau "
            f"lowers{floor}; a cell that reached the {self.max_examples}-example budget did not converge."
        )

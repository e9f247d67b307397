"""What every model of the study shares: teacher-forced logits, and one compiled greedy decoder.

A model subclasses `EncoderDecoder` and implements

    teacher_forced(source, decoder_inputs) -> (logits (batch, T, vocab), weights (batch, T, S) or None)
    start_decoding(source, max_steps)      -> (context, state)      # anything the steps need
    decode_step(i, previous, state, context) -> (logits (batch, vocab), weights (batch, S) or None, state)
    has_attention                           # whether decode_step returns weights

and gets `greedy_decode` (the whole loop as one `keras.ops.while_loop`, which ends
as soon as every row has emitted END) and
`greedy_decoder(max_steps)`, a thin Keras model (`GreedyDecoder`, with its step counts) whose
`predict` compiles it.

Greedy decoding chooses among the characters and END only: PAD and START are
never emitted, so no special id can end or vanish from a prediction unseen.
"""

from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
from keras import ops

from study.vocab import END, PAD, START, Vocabulary


def one_graph_for_every_step_count() -> bool:
    """Whether the backend decodes every step count with one compiled decoder (TensorFlow: the
    counts are inputs of the graph) rather than one program per count (XLA, on JAX, needs every
    shape at compile time)."""
    return keras.backend.backend() == "tensorflow"


class EncoderDecoder(keras.Model):
    """Base class: the greedy decoding loop over a subclass's `decode_step`."""

    has_attention = False

    def __init__(self, target_vocab_size: int, alphabets: dict | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.target_vocab_size = target_vocab_size
        # {"source": ..., "target": ...}: the task's alphabets, saved with the model so that a
        # loaded model can encode and decode text (`vocabularies`)
        self.alphabets = dict(alphabets or {})
        # compiled decoders by flags (and step counts on JAX); set past Keras' attribute tracking,
        # since a decoder holds this model and is not one of its layers
        object.__setattr__(self, "_greedy_decoders", {})

    def create_weights(self) -> None:
        """Builds every layer by calling the model once on a (1, 2) source and decoder input."""
        self((np.ones((1, 2), dtype="int32"), np.ones((1, 2), dtype="int32")))

    def vocabularies(self) -> tuple[Vocabulary, Vocabulary]:
        """(source, target) vocabularies of the task the model was trained on."""
        if not self.alphabets:
            raise ValueError("this model was saved without its alphabets; build the vocabularies from its task")
        return Vocabulary(self.alphabets["source"]), Vocabulary(self.alphabets["target"])

    def get_config(self):
        return {**super().get_config(), "alphabets": self.alphabets}

    @classmethod
    def from_config(cls, config):
        model = cls(**config)
        model.create_weights()  # so that saved weights can be loaded into it
        return model

    def call(self, inputs, training=False):
        """inputs: (source (batch, S), decoder_inputs (batch, T)) -> logits (batch, T, vocab)."""
        source, decoder_inputs = inputs
        return self.teacher_forced(source, decoder_inputs)[0]

    def greedy_decode(
        self, source, max_steps: int, with_logits: bool = False, with_attention: bool = False, min_steps: int = 0
    ):
        """Feeds the model its own argmax for up to `max_steps` steps, in one compiled loop
        that ends early once every row has emitted END.

        At each step the argmax runs over the characters and END only (PAD and
        START are excluded); before step `min_steps` END is excluded too, so every
        row emits at least `min_steps` characters (`min_steps = max_steps`: exactly
        `max_steps` characters and no END, the decoder driven over a fixed length).

        Args:
            source: (batch, S) int, right-padded.
            max_steps: number of decoder steps (see `study.evaluate.decode_steps`): an int, or
                on TensorFlow a scalar int tensor (`GreedyDecoder`).
            min_steps: steps before which END cannot be chosen (0: none), likewise.

        Returns:
            dict with "tokens" (batch, max_steps) int32: each row's characters, then END,
            then PAD (a row that never chose END holds characters only); with flags also
            "logits" (batch, max_steps, vocab), the model's own logits before any id was
            excluded, and "attention" (batch, max_steps, S), both zero after a row has ended.
        """
        context, state = self.start_decoding(source, max_steps)
        batch = ops.shape(source)[0]
        carry = {
            "previous": ops.full((batch,), START, dtype="int32"),
            "state": state,
            "finished": ops.zeros((batch,), dtype="bool"),
            "tokens": ops.zeros((batch, max_steps), dtype="int32"),
        }
        if with_logits:
            carry["logits"] = ops.zeros((batch, max_steps, self.target_vocab_size))
        if with_attention and self.has_attention:
            carry["attention"] = ops.zeros((batch, max_steps, ops.shape(source)[1]))

        ids = ops.arange(self.target_vocab_size)
        never = ops.logical_or(ops.equal(ids, PAD), ops.equal(ids, START))  # (vocab,) ids greedy decoding never emits

        def step(i, carry):
            logits, weights, new_state = self.decode_step(i, carry["previous"], carry["state"], context)
            excluded = ops.logical_or(never, ops.logical_and(ops.equal(ids, END), i < min_steps))
            choice = ops.cast(ops.argmax(ops.where(excluded[None, :], float("-inf"), logits), axis=-1), "int32")
            token = ops.where(carry["finished"], PAD, choice)
            here = ops.one_hot(i, max_steps)  # (max_steps,) float: writes column i
            alive = ops.cast(ops.logical_not(carry["finished"]), "float32")
            updated = {
                "previous": token,
                "state": new_state,
                "finished": ops.logical_or(carry["finished"], ops.equal(token, END)),
                "tokens": carry["tokens"] + ops.cast(here, "int32")[None, :] * token[:, None],
            }
            if "logits" in carry:
                updated["logits"] = carry["logits"] + here[None, :, None] * (alive[:, None] * logits)[:, None, :]
            if "attention" in carry:
                updated["attention"] = carry["attention"] + here[None, :, None] * (alive[:, None] * weights)[:, None, :]
            return updated

        def running(i, carry):  # stops early once every row has emitted END
            return ops.logical_and(i < max_steps, ops.logical_not(ops.all(carry["finished"])))

        _, carry = ops.while_loop(
            running, lambda i, carry: (i + 1, step(i, carry)), (ops.convert_to_tensor(0, dtype="int32"), carry)
        )
        return {k: carry[k] for k in ("tokens", "logits", "attention") if k in carry}

    def greedy_decoder(
        self, max_steps: int, with_logits: bool = False, with_attention: bool = False, min_steps: int = 0
    ) -> "StepsDecoder":
        """The compiled decoder for `max_steps` steps (END held back before `min_steps`), built on
        first use and then reused; `.predict(source_ids, batch_size=...)` returns `greedy_decode`'s
        dict as numpy.

        On TensorFlow one graph serves every step count (the counts are inputs, and the token
        buffer's width a tensor), so the test lengths, the oracle-length decoding and greedy
        validation share one trace per set of flags instead of one per step count (about 0.3 s
        each, a third of a cell's test decoding).  Other backends compile a program per step count
        (XLA, on JAX, needs every shape at compile time)."""
        static = not one_graph_for_every_step_count()
        key = (with_logits, with_attention) + ((min_steps, max_steps) if static else ())
        if key not in self._greedy_decoders:
            self._greedy_decoders[key] = GreedyDecoder(
                self, with_logits, with_attention, (min_steps, max_steps) if static else None
            )
        return StepsDecoder(self._greedy_decoders[key], max_steps, min_steps)


class GreedyDecoder(keras.Model):
    """A thin model whose `predict` compiles `greedy_decode` (one graph/XLA program per batch
    shape) and runs it batch by batch; it owns no weights of its own.  Its input is
    `(source, steps)`: source (batch, S) int, steps (batch, 2) int32, each row
    `[min_steps, max_steps]` (`greedy_decode`), the same in every row; with `static_steps`
    set, those are fixed when it is built and the input's are ignored (XLA)."""

    def __init__(
        self,
        model: EncoderDecoder,
        with_logits: bool = False,
        with_attention: bool = False,
        static_steps: tuple[int, int] | None = None,
    ) -> None:
        super().__init__()
        self.encoder_decoder = model
        self.with_logits = with_logits
        self.with_attention = with_attention
        self.static_steps = static_steps
        if static_steps is None:
            self.jit_compile = False  # the token buffer's width is only known when the graph runs

    def build(self, input_shape) -> None:
        """Nothing to build: the decoder owns no weights, and those of the model it decodes
        with are the model's (created when it was built or loaded)."""
        self.built = True

    def call(self, inputs):
        source, steps = inputs
        min_steps, max_steps = self.static_steps or (steps[0, 0], steps[0, 1])
        return self.encoder_decoder.greedy_decode(source, max_steps, self.with_logits, self.with_attention, min_steps)

    def predict(self, x, batch_size: int | None = None, verbose=0, *, max_steps: int, min_steps: int = 0) -> dict:
        """`greedy_decode`'s dict as numpy for the rows of `x`, (n, S) int, decoded for up to
        `max_steps` steps (END held back before `min_steps`) `batch_size` rows at a time
        (default 32), as `keras.Model.predict` does and with the same compiled function
        (`predict_on_batch`), but without its `tf.data` pipeline: deleting that pipeline's
        iterator waits for its autotuning thread to wake up, which held up decoding by seconds
        with two cells training side by side (`study.train.without_autotuning`).  `verbose` is
        accepted for `keras.Model.predict`'s callers; nothing is printed.

        Raises:
            ValueError: `x` holds no rows, `batch_size` is below 1, or the step counts differ
                from those the decoder was compiled for (`static_steps`).
        """
        x = np.asarray(x)
        batch_size = 32 if batch_size is None else batch_size
        if not len(x) or batch_size < 1:
            raise ValueError(f"need at least one row and a batch size from 1, got {len(x)} rows and {batch_size}")
        if self.static_steps not in (None, (min_steps, max_steps)):
            raise ValueError(f"this decoder was compiled for steps {self.static_steps}, not {(min_steps, max_steps)}")
        parts = [
            self._predict_rows(x[start : start + batch_size], batch_size, (min_steps, max_steps))
            for start in range(0, len(x), batch_size)
        ]
        return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

    def _predict_rows(self, rows: np.ndarray, batch_size: int, steps: tuple[int, int]) -> dict:
        """`predict_on_batch` on `rows`, (n, S) int, n <= batch_size.  On JAX, XLA compiles a
        program for every batch shape it meets, and the oracle-length decoding's subsets of rows
        come in any size: the rows are padded to the next power of two (at most `batch_size`)
        with copies of the first (a copy ends when its original does, so the loop runs as many
        steps) and the copies' outputs dropped."""
        n = len(rows)
        if keras.backend.backend() == "jax":
            rows = np.concatenate([rows, np.repeat(rows[:1], min(1 << (n - 1).bit_length(), batch_size) - n, axis=0)])
        steps_in = np.tile(np.asarray(steps, dtype="int32"), (len(rows), 1))
        return {key: np.asarray(value)[:n] for key, value in self.predict_on_batch((rows, steps_in)).items()}


@dataclass(frozen=True)
class StepsDecoder:
    """A compiled `GreedyDecoder` with its step counts: what `EncoderDecoder.greedy_decoder`
    returns; `predict(source_ids, batch_size=None)` as `GreedyDecoder.predict`."""

    decoder: GreedyDecoder
    max_steps: int
    min_steps: int = 0

    def predict(self, x, batch_size: int | None = None, verbose=0) -> dict:
        return self.decoder.predict(x, batch_size, verbose, max_steps=self.max_steps, min_steps=self.min_steps)

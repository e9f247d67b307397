"""The RNN encoder-decoder, with or without attention, and its compiled greedy decoder.

    model = Seq2Seq(source_vocab_size=19, target_vocab_size=19, attention="additive")
    logits = model((source_ids, decoder_inputs))          # teacher forcing
    # source_ids: (batch, S) int, right-padded with 0; decoder_inputs: (batch, T) = START + target
    # logits: (batch, T, target_vocab_size)
    out = model.greedy_decode(source_ids, max_steps=33)   # {"tokens": (batch, 33)}, END then PAD

Architecture (identical for every attention type; only the scorer differs):

    source -> embedding -> encoder RNN -> memory (batch, S, units), final state
    decoder RNN starts from the encoder's final state and reads the previous
        target character (teacher forcing in training, its own output in decoding)
    attention sits *after* the decoder RNN (Luong et al. 2015): at step t the
        decoder state s_t scores every memory row, the masked softmax of the
        scores weighs the memory into a context c_t, and
        h~_t = tanh(W_c [c_t; s_t]);  logits_t = W_o h~_t
    without attention ("none") the decoder state alone is read out:
        h~_t = tanh(W_c s_t), so the encoder's final state, the decoder's initial
        state, is its only view of the input (Sutskever et al. 2014).

    with `placement="every_step"` (no attention) the encoder's final state c is
        also fed, beside the previous character, into every decoder step and into
        the read-out, as in Cho et al. (2014), "Learning Phrase Representations
        using RNN Encoder-Decoder for Statistical Machine Translation":
        s_t = cell([y_{t-1}; c], s_{t-1});  logits_t = W_o tanh(W_c [c; s_t])

    with `placement="recurrent"` attention sits *inside* the recurrence instead
        (Bahdanau et al. 2014, with Luong's input feeding): at step t the previous
        decoder state s_{t-1} scores the memory, and the context c_t is fed into
        the cell together with the previous character:
        s_t = cell([y_{t-1}; c_t], s_{t-1});  logits_t = W_o tanh(W_c [c_t; s_t])

Training runs the decoder as a Keras GRU/LSTM layer over the whole target
(`keras.ops.scan` over the cell for the recurrent placement); decoding runs the
same cell one step at a time inside `keras.ops.while_loop`, and both share
`_read_out`, so the decoder is the trained model and nothing is rebuilt.
"""

from __future__ import annotations

from study.backend import start_backend_unless_started

start_backend_unless_started()  # before Keras imports the backend: TensorFlow without its start-up notices

import keras
from keras import ops

from study.models.base import EncoderDecoder
from study.models.layers.attention import SCORERS, attend
from study.vocab import PAD

RNN_LAYERS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}
RNN_CELLS = {"gru": keras.layers.GRUCell, "lstm": keras.layers.LSTMCell}
PLACEMENTS = ("output", "recurrent", "every_step")


@keras.saving.register_keras_serializable(package="study")
class Seq2Seq(EncoderDecoder):
    """Character-level encoder-decoder.

    Args:
        source_vocab_size, target_vocab_size: vocabulary sizes (specials included).
        attention: "none" or a registered scorer ("additive", "dot", "general").
        cell: "gru" or "lstm".
        units: encoder and decoder hidden size.
        embedding_dim: character embedding size.
        attention_size: hidden size of the additive scorer.
        bidirectional: bidirectional encoder; its outputs and states are
            projected to `units`.
        placement: "output" (attention after the decoder RNN) or "recurrent"
            (context fed into the decoder cell); ignored without attention.
    """

    def __init__(
        self,
        source_vocab_size: int,
        target_vocab_size: int,
        attention: str = "none",
        cell: str = "gru",
        units: int = 128,
        embedding_dim: int = 32,
        attention_size: int = 64,
        bidirectional: bool = False,
        placement: str = "output",
        **kwargs,
    ) -> None:
        super().__init__(target_vocab_size, **kwargs)
        self.settings = dict(
            source_vocab_size=source_vocab_size,
            target_vocab_size=target_vocab_size,
            attention=attention,
            cell=cell,
            units=units,
            embedding_dim=embedding_dim,
            attention_size=attention_size,
            bidirectional=bidirectional,
            placement=placement,
        )
        if placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got {placement!r}")
        if placement == "every_step" and attention != "none":
            raise ValueError(
                f"placement 'every_step' feeds the encoder's final state to every step, a model without attention; got attention {attention!r}"
            )
        self.context_fed = placement == "every_step"
        self.recurrent_attention = placement == "recurrent" and attention != "none"
        self.units = units
        rnn = RNN_LAYERS[cell]
        self.source_embedding = keras.layers.Embedding(source_vocab_size, embedding_dim, name="source_embedding")
        self.target_embedding = keras.layers.Embedding(target_vocab_size, embedding_dim, name="target_embedding")
        encoder = rnn(units, return_sequences=True, return_state=True, name="encoder")
        self.encoder = keras.layers.Bidirectional(encoder, name="bi_encoder") if bidirectional else encoder
        n_states = 2 if cell == "lstm" else 1
        self.bridges = (
            [keras.layers.Dense(units, activation="tanh", name=f"bridge_{i}") for i in range(n_states)]
            if bidirectional
            else []
        )
        self.memory_projection = (
            keras.layers.Dense(units, name="memory_projection") if bidirectional and attention != "none" else None
        )
        if self.recurrent_attention:  # stepped by keras.ops.scan: its input depends on each step's attention
            self.decoder_cell = RNN_CELLS[cell](units, name="decoder_cell")
        else:
            self.decoder = rnn(units, return_sequences=True, return_state=True, name="decoder")
            self.decoder_cell = self.decoder.cell
        self.scorer = (
            None if attention == "none" else SCORERS.get(attention)(units, attention_size, name=f"{attention}_scorer")
        )
        self.combine = keras.layers.Dense(units, activation="tanh", name="combine")
        self.output_layer = keras.layers.Dense(target_vocab_size, name="output")

    @property
    def has_attention(self) -> bool:
        return self.scorer is not None

    # -- pieces shared by training and decoding -------------------------------------------

    def encode(self, source):
        """source: (batch, S) int -> memory (batch, S, units), keys (batch, S, K) or None,
        mask (batch, S) bool, decoder initial states (list of (batch, units))."""
        mask = ops.not_equal(source, PAD)
        outputs = self.encoder(self.source_embedding(source), mask=mask)
        memory, states = outputs[0], list(outputs[1:])
        if self.bridges:
            half = len(states) // 2  # [forward states..., backward states...]
            states = [
                bridge(ops.concatenate([f, b], axis=-1))
                for bridge, f, b in zip(self.bridges, states[:half], states[half:])
            ]
        if self.memory_projection is not None:
            memory = self.memory_projection(memory)
        keys = self.scorer.keys(memory) if self.scorer is not None else None
        return memory, keys, mask, states

    def _logits(self, context, decoder_states):
        """Luong's read-out W_o tanh(W_c [c; s]) (W_o tanh(W_c s) without attention); any leading shape."""
        features = decoder_states if context is None else ops.concatenate([context, decoder_states], axis=-1)
        return self.output_layer(self.combine(features))

    def _read_out(self, decoder_states, memory, keys, mask):
        """decoder_states: (batch, T, units) -> logits (batch, T, vocab), weights (batch, T, S) or None."""
        if self.scorer is None:
            return self._logits(None, decoder_states), None
        context, weights = attend(self.scorer, decoder_states, keys, memory, mask)
        return self._logits(context, decoder_states), weights

    def _input_fed_step(self, embedded, states, memory, keys, mask):
        """One step of the recurrent placement: the previous state scores the memory and the
        context enters the cell with the previous character.
        embedded (batch, E) -> output (batch, units), new states, context (batch, units), weights (batch, S)."""
        context, weights = attend(self.scorer, ops.expand_dims(states[0], 1), keys, memory, mask)
        output, new_states = self.decoder_cell(ops.concatenate([embedded, context[:, 0]], axis=-1), states)
        return output, list(new_states), context[:, 0], weights[:, 0]

    # -- teacher forcing ------------------------------------------------------------------

    def teacher_forced(self, source, decoder_inputs):
        """Logits (batch, T, vocab) and attention weights (batch, T, S) or None, given the
        decoder's inputs (START followed by the previous target characters)."""
        memory, keys, mask, states = self.encode(source)
        embedded = self.target_embedding(decoder_inputs)
        if self.context_fed:  # the encoder's final state beside every character, and in the read-out
            steps = ops.shape(decoder_inputs)[1]
            context = ops.repeat(ops.expand_dims(states[0], 1), steps, axis=1)  # (batch, T, units)
            outputs = self.decoder(ops.concatenate([embedded, context], axis=-1), initial_state=states)
            return self._logits(context, outputs[0]), None
        if not self.recurrent_attention:
            outputs = self.decoder(embedded, initial_state=states)
            return self._read_out(outputs[0], memory, keys, mask)

        def step(carry, x_t):  # carry: (states, output, context); TensorFlow's scan emits the carry
            output, new_states, context, _ = self._input_fed_step(x_t, carry[0], memory, keys, mask)
            new = (new_states, output, context)
            return new, new

        batch = ops.shape(source)[0]
        zeros = ops.zeros((batch, self.units))
        _, (_, outputs, contexts) = ops.scan(step, (list(states), zeros, zeros), ops.transpose(embedded, (1, 0, 2)))
        outputs = ops.transpose(outputs, (1, 0, 2))  # (batch, T, units)
        contexts = ops.transpose(contexts, (1, 0, 2))
        logits = self._logits(contexts, outputs)
        # weights of step t were computed from state t-1: recompute them in parallel for the caller
        previous = ops.concatenate([ops.expand_dims(states[0], 1), outputs[:, :-1]], axis=1)
        _, weights = attend(self.scorer, previous, keys, memory, mask)
        return logits, weights

    # -- greedy decoding ------------------------------------------------------------------

    def start_decoding(self, source, max_steps: int):
        """context (memory, keys, mask, the encoder's final state) and the first decoder states,
        from `encode`."""
        memory, keys, mask, states = self.encode(source)
        return (memory, keys, mask, states[0]), states

    def decode_step(self, i, previous, states, context):
        """One decoder step with the trained cell: previous (batch,) int ids, states as from
        `start_decoding` -> logits (batch, vocab), weights (batch, S) or None, new states."""
        memory, keys, mask, final = context
        embedded = self.target_embedding(previous)
        if self.context_fed:
            output, new_states = self.decoder_cell(ops.concatenate([embedded, final], axis=-1), states)
            return self._logits(final, output), None, list(new_states)
        if self.recurrent_attention:
            output, new_states, context, weights = self._input_fed_step(embedded, states, memory, keys, mask)
            return self._logits(context, output), weights, new_states
        output, new_states = self.decoder_cell(embedded, states)
        logits, weights = self._read_out(ops.expand_dims(output, 1), memory, keys, mask)
        return logits[:, 0], None if weights is None else weights[:, 0], list(new_states)

    def get_config(self):
        return {**super().get_config(), **self.settings}

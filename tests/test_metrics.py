"""The metrics on hand-made predictions with known answers, written from their definitions:
exact match needs every character and END in place; character accuracy counts wrong, missing
and extra characters; special ids and a missing END never vanish from scored text; the decode
cap leaves room for END; greedy decoding never emits PAD or START."""

import numpy as np
import pytest
from keras import ops

from study.evaluate import decode, decode_steps, evaluate, score
from study.models.base import EncoderDecoder
from study.vocab import END, INVALID, PAD, START, Vocabulary

VOCAB = Vocabulary("abcd")
A, B, C, D = (VOCAB.encode(ch)[0] for ch in "abcd")


@pytest.mark.parametrize(
    "prediction,target,seq_acc,char_acc,position_acc",
    [
        ("abc", "abc", 1.0, 1.0, [1, 1, 1]),
        ("abd", "abc", 0.0, 2 / 3, [1, 1, 0]),  # a wrong character
        ("ab", "abcd", 0.0, 2 / 4, [1, 1, 0, 0]),  # too short: the missing characters are errors
        ("abcd", "abc", 0.0, 3 / 4, [1, 1, 1]),  # one extra character
        ("2021-03-03 1999-01-01 2000-02-02", "2021-03-03", 0.0, 10 / 32, [1] * 10),  # never stops
        ("", "ab", 0.0, 0.0, [0, 0]),
        ("bca", "abc", 0.0, 0.0, [0, 0, 0]),  # the right characters in the wrong places
    ],
    ids=["exact", "wrong-char", "too-short", "one-extra", "over-long", "empty", "shifted"],
)
def test_score_of_one_prediction(prediction, target, seq_acc, char_acc, position_acc):
    result = score([prediction], [target])
    assert result["n_examples"] == 1
    assert result["seq_acc"] == seq_acc
    assert result["char_acc"] == pytest.approx(char_acc)
    assert result["position_acc"] == pytest.approx(position_acc)


def test_score_of_a_batch_pools_characters_and_positions():
    # exact; one missing; two extra; per position: among the targets that long
    result = score(["abc", "xy", "pqrs"], ["abc", "xyz", "pq"])
    assert result["seq_acc"] == pytest.approx(1 / 3)
    assert result["char_acc"] == pytest.approx((3 + 2 + 2) / (3 + 3 + 4))
    assert result["position_acc"] == pytest.approx([1.0, 1.0, 0.5])


def test_score_refuses_unequal_or_empty_lists():
    with pytest.raises(ValueError, match="need as many predictions as targets"):
        score(["a"], ["a", "b"])
    with pytest.raises(ValueError, match="need as many predictions as targets"):
        score([], [])


@pytest.mark.parametrize(
    "ids,text,target,exact",
    [
        ([A, B, C, END], "abc", "abc", True),
        ([A, B, C, END, D, PAD], "abc", "abc", True),  # what follows END is not read
        ([A, B, C], "abc" + INVALID, "abc", False),  # no END
        ([A, START, B, C, END], "a" + INVALID + "bc", "abc", False),  # a START inside the output
        ([A, B, PAD, END], "ab" + INVALID, "ab", False),  # PAD is not an END
        ([PAD, PAD, PAD], INVALID * 4, "abc", False),  # nothing but padding
    ],
    ids=["end", "after-end", "no-end", "start-inside", "pad-before-end", "all-pad"],
)
def test_decoded_special_ids_and_missing_end_are_errors(ids, text, target, exact):
    prediction = VOCAB.decode(ids)
    assert prediction == text
    assert (score([prediction], [target])["seq_acc"] == 1.0) is exact


def test_decode_refuses_ids_outside_the_vocabulary():
    with pytest.raises(ValueError, match="outside the vocabulary"):
        VOCAB.decode([A, VOCAB.size, END])


def test_decode_cap_leaves_room_for_end_and_for_over_generation():
    assert decode_steps(["abc"]) == 8
    assert decode_steps(["ab", "abcde", "a"]) == 12


def test_length_shares_and_mean_predicted_length():
    result = score(["abc", "ab", "abcd", "xyz"], ["abc", "abc", "abc", "abc"])
    assert (result["length_acc"], result["too_short"], result["too_long"]) == (0.5, 0.25, 0.25)
    assert result["mean_prediction_length"] == 3.0


class Scripted(EncoderDecoder):
    """A weightless model whose step t puts the logits `script[t]` on every row: the decoding
    loop, the text conversion and the metrics, driven with a known output."""

    def __init__(self, script: np.ndarray) -> None:
        super().__init__(target_vocab_size=script.shape[1])
        self.script = np.asarray(script, dtype="float32")

    def start_decoding(self, source, max_steps):
        return None, ops.zeros((ops.shape(source)[0], 1))

    def decode_step(self, i, previous, state, context):  # the script's last row repeats
        logits = ops.take(ops.convert_to_tensor(self.script), ops.minimum(i, len(self.script) - 1), axis=0)
        return ops.broadcast_to(logits[None, :], (ops.shape(previous)[0], self.script.shape[1])), None, state


def _script(*steps):
    """Logits per step: the first id of each step gets 10, the second 5, the rest 0."""
    out = np.zeros((len(steps), VOCAB.size), dtype="float32")
    for t, ranked in enumerate(steps):
        for value, i in zip((10.0, 5.0), ranked):
            out[t, i] = value
    return out


def _evaluate(script, targets):
    sources = ["a"] * len(targets)
    return evaluate(Scripted(script), sources, targets, VOCAB, VOCAB)


def test_a_model_that_emits_the_target_and_end_scores_one():
    result = _evaluate(_script([A], [B], [C], [END], [END], [END]), ["abc", "abc"])
    assert result["seq_acc"] == 1.0 and result["char_acc"] == 1.0


def test_a_model_that_never_ends_scores_zero():
    result = _evaluate(_script([A], [B], [C], [D]), ["abc"])
    assert result["seq_acc"] == 0.0 and result["too_long"] == 1.0
    # "abcddddd" within the cap of 8 steps, then INVALID for the missing END: 3 of 9 positions right
    assert result["char_acc"] == pytest.approx(3 / 9) and result["mean_prediction_length"] == 9
    assert result["oracle_seq_acc"] == 1.0  # it knows the content, not where to stop


def test_oracle_length_exact_match_holds_end_back_until_the_targets_length():
    # END is the top choice at every step, the target's characters the second
    result = _evaluate(_script([END, A], [END, B], [END, C], [END, D]), ["abc", "ab", "abcd", "abd"])
    assert result["seq_acc"] == 0.0 and result["too_short"] == 1.0
    assert result["oracle_seq_acc"] == 0.75  # "abc", "ab", "abcd" right; "abd" is not what it writes


def test_oracle_length_exact_match_decodes_again_only_the_rows_that_ended_early(monkeypatch):
    """Greedy decoding writes "ab" and END for every row.  A row whose target is no longer than
    that already holds its oracle-length prediction; the rows whose targets are longer ended
    early and are decoded again with END held back ("abc": C is the second choice at step 3).
    The result equals decoding every row again."""
    import study.evaluate as evaluation

    model = Scripted(_script([A], [B], [END, C], [END, D], [END]))
    targets = ["ab", "a", "abc", "abd", "b"]  # right, right, right, wrong ("abc"), wrong ("a")
    decoded_again = []
    decode_again = evaluation.decode_at_target_length

    def recording(model, sources, targets, *args, **kwargs):
        decoded_again.extend(targets)
        return decode_again(model, sources, targets, *args, **kwargs)

    monkeypatch.setattr(evaluation, "decode_at_target_length", recording)
    result = evaluate(model, ["a"] * len(targets), targets, VOCAB, VOCAB)
    assert result["seq_acc"] == 0.2 and result["oracle_seq_acc"] == 0.6
    assert decoded_again == ["abc", "abd"]
    every_row = evaluation.oracle_exact_match(model, ["a"] * len(targets), targets, VOCAB, VOCAB)
    assert every_row == 0.6 and decoded_again[2:] == targets


def test_a_model_that_stops_early_scores_zero():
    result = _evaluate(_script([A], [B], [END], [END]), ["abc"])
    assert result["seq_acc"] == 0.0 and result["char_acc"] == pytest.approx(2 / 3)


class EndsBySource(EncoderDecoder):
    """A weightless model that writes "a" until step 3 x (the row's first source id - A), then
    END: source "a" ends at once, "b" after 3 characters, "c" after 6, "d" after 9."""

    def __init__(self) -> None:
        super().__init__(target_vocab_size=VOCAB.size)

    def start_decoding(self, source, max_steps):
        return 3 * (ops.cast(source[:, 0], "int32") - A), ops.zeros((ops.shape(source)[0], 1))

    def decode_step(self, i, previous, state, context):
        ended = ops.cast(i >= context, "float32")[:, None]
        logits = ops.one_hot(ops.full(ops.shape(context), END), VOCAB.size) * ended
        return 10.0 * (logits + ops.one_hot(ops.full(ops.shape(context), A), VOCAB.size) * (1.0 - ended)), None, state


def test_decoding_in_two_passes_decodes_again_only_the_rows_still_going(monkeypatch):
    """With `first_steps`, the rows without END after the first pass are decoded again for the
    whole cap, and the predictions are those of one pass: a row ending within the first pass, one
    ending after it and one never ending within the cap."""
    import study.models.base as base

    model = EndsBySource()
    sources = ["a", "b", "c", "d", "b"]
    one, _ = decode(model, sources, VOCAB, VOCAB, 8)
    assert one == ["", "aaa", "aaaaaa", "aaaaaaaa" + INVALID, "aaa"]
    passes = []
    predict = base.StepsDecoder.predict

    def recording(self, x, *args, **kwargs):
        passes.append((self.max_steps, len(x)))
        return predict(self, x, *args, **kwargs)

    monkeypatch.setattr(base.StepsDecoder, "predict", recording)
    assert decode(model, sources, VOCAB, VOCAB, 8, first_steps=4) == (one, None)
    assert passes == [(4, 5), (8, 2)]  # "c" and "d" again
    passes.clear()  # the study's evaluation: a first pass of the longest target (3) plus 2 steps
    assert evaluate(model, sources, ["", "aaa", "aaa", "aaa", "aaa"], VOCAB, VOCAB)["seq_acc"] == 0.6
    assert passes[:2] == [(5, 5), (8, 2)]


def test_greedy_decoding_never_emits_pad_or_start():
    # PAD or START is the top logit at steps 1 and 2; the next best character is taken
    predictions, _ = decode(Scripted(_script([A], [PAD, B], [START, C], [END])), ["a"], VOCAB, VOCAB, 4)
    assert predictions == ["abc"]


def test_min_steps_keeps_end_out_until_then():
    model = Scripted(_script([END, A], [END, B], [END, C], [END, D]))
    tokens = model.greedy_decoder(4, min_steps=2).predict(np.ones((2, 1), "int32"), verbose=0)["tokens"]
    assert tokens.tolist() == [[A, B, END, PAD]] * 2
    tokens = model.greedy_decoder(4, min_steps=4).predict(np.ones((1, 1), "int32"), verbose=0)["tokens"]
    assert tokens.tolist() == [[A, B, C, D]]


def test_a_model_trained_without_end_is_decoded_at_the_targets_length():
    """`end_token` False: every prediction has exactly its target's length (END never chosen,
    decoding stopped there), a wrong character still counts, and exact match is the
    oracle-length exact match; its training targets carry no END."""
    model = Scripted(_script([END, A], [END, B], [END, C], [END, D]))
    result = evaluate(model, ["a"] * 3, ["abc", "ab", "abd"], VOCAB, VOCAB, end_token=False)
    assert result["length_acc"] == 1.0 and result["seq_acc"] == pytest.approx(2 / 3) == result["oracle_seq_acc"]
    assert result["char_acc"] == pytest.approx(7 / 8)  # "abd" written as "abc": one wrong character
    from study.data import Dataset
    from study.train import EncodedSet

    data = Dataset(["ab"], ["abc"], np.array([2]))
    assert EncodedSet.build(data, VOCAB, VOCAB, end_token=False).targets == [[START, A, B, C]]
    assert EncodedSet.build(data, VOCAB, VOCAB).targets == [[START, A, B, C, END]]


def test_the_attention_example_is_the_first_right_one_of_those_with_weights():
    """The map shows a right example where there is one among the examples whose weights were
    kept, and the first example otherwise (drawn WRONG); beyond the range the first wrong one."""
    from study.cell import example_index

    targets = ["ab", "cd", "ad", "bb"]
    assert example_index(["ab", "cd", "ad", "bb"], targets, kept=4) == 0
    assert example_index(["aa", "cc", "ad", "bb"], targets, kept=4) == 2
    assert example_index(["aa", "cc", "ad", "bb"], targets, kept=1) == 0  # only the first has weights
    assert example_index(["aa", "cc", "aa", "ba"], targets, kept=4) == 0
    assert example_index(["ab", "cd", "aa", "bb"], targets, kept=4, right=False) == 2
    assert example_index(["ab", "cd", "ad", "bb"], targets, kept=4, right=False) == 0  # none wrong: the first


@pytest.mark.parametrize(
    "train,evals,expected",
    [
        ((2, 3, 4, 5), (2, 5, 8), {"attention_example": 5, "attention_example_beyond": 8}),
        ((4, 32), (4, 8, 16, 24, 32, 36, 40, 64), {"attention_example": 16, "attention_example_beyond": 36}),
        ((1, 2, 3, 4), (1, 2, 3, 4), {"attention_example": 3}),
        ((6,), (4, 8, 16), {"attention_example_beyond": 8}),  # per_length: no evaluation length inside
        ((4, 5, 6, 7, 8), (4, 16, 32), {"attention_example": 4, "attention_example_beyond": 16}),
    ],
)
def test_the_attention_examples_are_mid_range_the_longer_of_a_tie_and_the_first_length_beyond(train, evals, expected):
    from study.cell import attention_example_lengths
    from study.config import TaskPlan

    assert attention_example_lengths(TaskPlan("copy", train, evals), train) == expected

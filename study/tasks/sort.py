"""sort: the worked example of a user task (see README, "Adding a task").

    source: "hbadcg"  ->  target: "abcdgh"      (length = 6 symbols)

This whole file is all it takes: a class with the contract's attributes,
`sample` drawing only from the `rng` it is given, and `@register_task`.
A file like it dropped into study/tasks/ is found automatically; kept
elsewhere, it is loaded with `run_study.py --task-module path/to/file.py`.
"""

import numpy as np

from study.tasks import Task, register_task


@register_task
class SortTask(Task):
    name = "sort"  # unique registry name
    version = 1  # bump whenever sample() changes its output for a seed
    description = "Sort a random string of symbols into alphabet order."
    length_unit = "symbols"  # what `length` counts
    min_length = 1
    max_length = None  # no upper bound

    def __init__(self, alphabet: str = "abcdefghijklmnop") -> None:
        super().__init__(alphabet=alphabet)  # options enter dataset cache keys
        self.alphabet = alphabet

    @property
    def input_alphabet(self) -> str:
        return self.alphabet

    @property
    def output_alphabet(self) -> str:
        return self.alphabet

    def target_for(self, source: str) -> str:
        """The target of any source (optional: with it, `predict` says whether a prediction is right)."""
        return "".join(sorted(source, key=self.alphabet.index))

    def sample(self, rng: np.random.Generator, n: int, length: int) -> tuple[list[str], list[str]]:
        self.check_length(length)
        picks = rng.integers(0, len(self.alphabet), size=(n, length))
        sources = ["".join(self.alphabet[i] for i in row) for row in picks]
        targets = ["".join(self.alphabet[i] for i in sorted(row)) for row in picks]  # in alphabet order
        return sources, targets

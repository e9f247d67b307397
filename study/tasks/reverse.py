"""reverse: the target is the source read backwards.

    source: "hbadcg"  ->  target: "gcdabh"      (length = 6 symbols)

The first target symbol is the last source symbol, so the decoder's first
steps depend on the end of the input, and its last steps on the beginning.
"""

from study.tasks import register_task
from study.tasks.base import SymbolTask


@register_task
class ReverseTask(SymbolTask):
    name = "reverse"
    version = 1
    description = "Write a random string of symbols backwards."

    def transform(self, source: str) -> str:
        return source[::-1]

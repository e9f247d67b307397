"""copy: the target is the source, unchanged.

    source: "hbadcg"  ->  target: "hbadcg"      (length = 6 symbols)

The simplest test of memory: a model must carry every symbol, in order, from
the encoder to the decoder.
"""

from study.tasks import register_task
from study.tasks.base import SymbolTask


@register_task
class CopyTask(SymbolTask):
    name = "copy"
    version = 1
    description = "Reproduce a random string of symbols unchanged."

    def transform(self, source: str) -> str:
        return source

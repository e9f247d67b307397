"""Fonts and character labels for figures: every character a task can produce stays readable.

    use_fonts()                 # once, before drawing: registers the bundled fonts as fallbacks
    label("ㄱ"), label("\\u202f")  # "ㄱ", "NNBSP": a tick label for one character
    readable("2021년\\u202f3월")  # "2021년[NNBSP]3월": a string for a title
    marks_note("a\\u202fሀ")      # "NNBSP = U+202F NARROW NO-BREAK SPACE; ..." or None

Matplotlib's own font, DejaVu Sans, covers Latin, Greek, Cyrillic, Arabic and Hebrew but has no
Hangul, kana, CJK ideographs, Thai or Devanagari, which date_format's locales (ko, ja, zh, th,
hi, ...) write.  The project's requirements install three fonts from PyPI, and `use_fonts`
puts them after DejaVu Sans in matplotlib's font list, which falls back glyph by glyph:

    Noto Sans        (fontpkg-noto-sans)      Devanagari, Vietnamese and more Latin
    Noto Sans Thai   (fontpkg-noto-sans-thai) Thai
    NanumGothic      (koreanize-matplotlib)   Hangul, kana and CJK ideographs (the file only:
                                              the package itself is never imported)

No font covers every script CLDR writes (Ethiopic, Myanmar, Tibetan, ...), and some characters
print nothing (no-break spaces, direction marks, joiners).  Such a character is drawn as a
labelled mark instead (`label`): its standard abbreviation ("NNBSP", "RLM") or its code point
("U+1200"), and `marks_note` explains every mark a figure uses.  A missing font package is not
an error: its characters are drawn as code points.
"""

from __future__ import annotations

import functools
import importlib.util
import unicodedata
from pathlib import Path

BASE_FAMILY = "DejaVu Sans"

# (family, where its file is): a fontpkg family name, or (package, file) for a package that
# ships a font file without a font registry.
FALLBACK_FONTS: tuple[tuple[str, str | tuple[str, str]], ...] = (
    ("Noto Sans", "Noto Sans"),
    ("Noto Sans Thai", "Noto Sans Thai"),
    ("NanumGothic", ("koreanize_matplotlib", "fonts/NanumGothic.ttf")),
)

# Unicode's abbreviations (NameAliases.txt) of the invisible characters CLDR date patterns use.
ABBREVIATIONS = {
    "\u00a0": "NBSP",
    "\u2007": "FSP",
    "\u2009": "THSP",
    "\u202f": "NNBSP",
    "\u200b": "ZWSP",
    "\u200c": "ZWNJ",
    "\u200d": "ZWJ",
    "\u200e": "LRM",
    "\u200f": "RLM",
    "\u061c": "ALM",
    "\u180e": "MVS",
    "\u2060": "WJ",
    "\ufeff": "ZWNBSP",
}
SPACE_MARK = "␣"
COMBINING_BASE = "\u25cc"  # dotted circle: the conventional base for a combining mark shown alone


def _font_file(where: str | tuple[str, str]) -> Path | None:
    """The font file of one FALLBACK_FONTS entry, or None when its package is not installed."""
    if isinstance(where, tuple):
        package, relative = where
        spec = importlib.util.find_spec(package)  # locates the package without running it
        if spec is None or not spec.submodule_search_locations:
            return None
        path = Path(list(spec.submodule_search_locations)[0]) / relative
        return path if path.is_file() else None
    try:
        import fontpkg

        return Path(fontpkg.path(where))
    except Exception:  # fontpkg or the family not installed
        return None


@functools.lru_cache(maxsize=1)
def _register() -> tuple[str, ...]:
    """Registers the installed fallback fonts with matplotlib once; returns their families."""
    from matplotlib import font_manager

    families = []
    for family, where in FALLBACK_FONTS:
        path = _font_file(where)
        if path is not None:
            font_manager.fontManager.addfont(str(path))
            families.append(family)
    return tuple(families)


def use_fonts() -> tuple[str, ...]:
    """Registers the installed fallback fonts with matplotlib and appends DejaVu Sans and them to
    `font.family` (after any family the user chose); returns the families in use, in order.
    Also turns off matplotlib's mathtext (`text.parse_math`): every text of the study's figures
    (alphabets, sources, predictions, task names, options) is drawn as written, so a "$" from a
    task is a dollar sign, not the start of a formula that fails to parse."""
    import matplotlib

    matplotlib.rcParams["text.parse_math"] = False
    ours = (BASE_FAMILY, *_register())
    chosen = [f for f in matplotlib.rcParams["font.family"] if f not in ours]
    families = (*chosen, *ours)
    matplotlib.rcParams["font.family"] = list(families)
    return families


@functools.lru_cache(maxsize=None)
def _coverage(families: tuple[str, ...]) -> frozenset[int]:
    """Code points some font of `families` has a glyph for."""
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    points: set[int] = set()
    for family in families:
        path = font_manager.findfont(font_manager.FontProperties(family=[family]), fallback_to_default=False)
        points.update(FT2Font(path).get_charmap())
    return frozenset(points)


def _covered() -> frozenset[int]:
    """Code points DejaVu Sans or an installed fallback font has glyphs for (a font the user put
    first in `font.family` may have more; these are the ones `use_fonts` guarantees)."""
    return _coverage((BASE_FAMILY, *_register()))


def _invisible(c: str) -> bool:
    """Prints nothing on its own: spaces other than ' ', format and control characters."""
    return unicodedata.category(c) in ("Zs", "Zl", "Zp", "Cc", "Cf", "Co", "Cn", "Cs") and c != " "


def label(c: str) -> str:
    """How one character is drawn: itself when a font covers it and it prints; ' ' as '␣'; an
    invisible character as its abbreviation ('NNBSP') or code point; a character no installed
    font covers as its code point ('U+1200'); a combining mark on a dotted circle."""
    if c == " ":
        return SPACE_MARK
    if _invisible(c):
        return ABBREVIATIONS.get(c, f"U+{ord(c):04X}")
    if ord(c) not in _covered():
        return f"U+{ord(c):04X}"
    if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me"):
        return COMBINING_BASE + c
    return c


def _marked(c: str) -> bool:
    return c != " " and (_invisible(c) or ord(c) not in _covered())


def readable(text: str) -> str:
    """`text` for a title: characters drawn as marks (`label`) are written '[NNBSP]', the rest as
    they are (a combining mark stays on its own base)."""
    return "".join(f"[{label(c)}]" if _marked(c) else c for c in text)


def marks_note(text: str) -> str | None:
    """One line naming every mark `label` uses for the characters of `text` (None: no marks):
    'NNBSP = U+202F NARROW NO-BREAK SPACE; U+1200 = ETHIOPIC SYLLABLE HA (no installed font has it)'."""
    parts = []
    for c in sorted(set(text)):
        if not _marked(c):
            continue
        name = unicodedata.name(c, "unnamed character")
        if _invisible(c):
            mark = label(c)
            parts.append(f"{mark} = {name}" if mark.startswith("U+") else f"{mark} = U+{ord(c):04X} {name}")
        else:
            parts.append(f"U+{ord(c):04X} = {name} (no installed font has it)")
    return "; ".join(parts) or None


def character_ticks(ax, axis: str, tokens: list[str], step: int = 1, fontsize: float = 7) -> None:
    """Labels `axis` ("x" or "y") of `ax` with one tick per `step` tokens (characters, or whole
    tokens such as "END"), each character drawn as `label` gives; on the x axis, labels longer
    than one glyph stand upright (rotated) so they do not run into their neighbours."""
    shown = range(0, len(tokens), step)
    labels = [label(t) if len(t) == 1 else t for t in tokens[::step]]
    (ax.set_xticks if axis == "x" else ax.set_yticks)(shown, labels, fontsize=fontsize)
    if axis == "x":
        for text in ax.get_xticklabels():
            if len(text.get_text().lstrip(COMBINING_BASE)) > 1:
                text.set_rotation(90)


def add_marks_note(fig, text: str) -> None:
    """Writes `marks_note(text)` under the figure, when the characters of `text` need marks."""
    note = marks_note(text)
    if note:
        fig.text(0.5, 0, "Marks: " + note, ha="center", va="top", fontsize=7, wrap=True)

"""Text from tasks, plugins, errors and users, escaped for the medium it enters.

    one_line("bad\ntarget")        # 'bad target': a terminal line stays one line
    markdown_cell("a|b\nc")        # 'a\\|b c': a Markdown table cell stays one cell
    comma_list(" 0, 1,,2 ")         # ['0', '1', '2']: a list as a command line writes it

Matplotlib's own markup (mathtext, "$...$") is turned off for the study's figures in
`study.fonts.use_fonts`; CSV files are written by pandas, which quotes what needs quoting.
"""


def one_line(text) -> str:
    """`text` with every line break (and other line separator) turned into a space."""
    return " ".join(str(text).splitlines())


def markdown_cell(text) -> str:
    """`text` safe inside a Markdown table cell or list item: one line (a line break ends the
    row), its pipes escaped (a bare "|" starts a new column)."""
    return one_line(text).replace("|", "\\|")


def comma_list(text: str) -> list[str]:
    """The items of a comma-separated list, stripped, empty ones dropped."""
    return [item.strip() for item in str(text).split(",") if item.strip()]

"""Every figure the docs attribute to a results file shows that file's value.

A figure is attributed by a Markdown link to a JSON file whose title is a key path in it:
``[0.485](../benchmarks/results/mnist_full_N_h100.json "rows[dataset=MNIST(N),model=spatial].rotation_relative")``
(the path relative to the Markdown file). Keys are joined by dots; ``[field=value,...]`` picks the one list item
with those values (a comma followed by a space belongs to the value), ``[2]`` an item by position. The link text is
the value rounded to the decimals shown, with ``−`` or ``-``, thousands separators, and ``%`` for a fraction shown
as a percentage; a unit stays outside the link.
"""

import json
import re
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r'\[([^][\n]+)\]\(([^\s)]+\.json) "([^"\n]+)"\)')
STEP = re.compile(r"([^.\[\]]+)|\[([^\]]*)\]")


def lookup(data, path: str):
    """The value at the key path ``path`` of ``data``."""
    for key, selector in STEP.findall(path):
        if key:
            data = data[key]
        elif selector.isdigit():
            data = data[int(selector)]
        else:
            wanted = dict(pair.split("=", 1) for pair in re.split(r",(?! )", selector))
            matches = [item for item in data if all(str(item.get(k)) == v for k, v in wanted.items())]
            if len(matches) != 1:
                raise LookupError(f"[{selector}] matches {len(matches)} items")
            data = matches[0]
    return data


def mismatch(shown: str, value) -> str | None:
    """Why the text ``shown`` is not ``value`` rounded to its decimals, or None."""
    number = shown.strip("*").replace("−", "-").replace(",", "")
    percent = number.endswith("%")
    number = number.removesuffix("%")
    decimals = len(number.partition(".")[2])
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return f"{value!r} in the file is not a number"
    if abs(float(number) - (100 * value if percent else value)) > 0.5 * 10 ** -decimals + 1e-9:
        return f"the file has {value}"
    return None


def problems(markdown: Path) -> list[str]:
    """One line for each figure of ``markdown`` whose results file does not back it."""
    found = []
    for shown, target, path in LINK.findall(markdown.read_text()):
        try:
            problem = mismatch(shown, lookup(json.loads((markdown.parent / target).read_text()), path))
        except (OSError, LookupError, TypeError, ValueError) as error:
            problem = f"{type(error).__name__}: {error}"
        if problem:
            found.append(f'{markdown.name}: [{shown}]({target} "{path}"): {problem}')
    return found


@pytest.mark.parametrize("markdown", DOCS, ids=lambda path: path.name)
def test_docs_figures_match_their_results_files(markdown):
    assert problems(markdown) == []


def test_readme_and_benchmarks_attribute_their_figures():
    for markdown in REPO / "README.md", REPO / "docs" / "benchmarks.md":
        assert len(LINK.findall(markdown.read_text())) >= 10, markdown


def test_the_check_reads_each_form_and_catches_wrong_values(tmp_path):
    rows = [{"data": "snr0.1", "model": "a, b", "accuracy": 0.5965, "n": 1543.4},
            {"data": "snr0.1", "model": "c", "accuracy": -0.25, "n": "many"}]
    (tmp_path / "r.json").write_text(json.dumps({"rows": rows}))
    good = tmp_path / "good.md"
    good.write_text('γ ∈ [−π, π): [59.7%](r.json "rows[data=snr0.1,model=a, b].accuracy"),\n'
                    '[1,543](r.json "rows[0].n") s, **[−0.250](r.json "rows[model=c].accuracy")**, '
                    '[-0.25](r.json "rows[1].accuracy")\n')
    assert problems(good) == []
    bad = tmp_path / "bad.md"
    bad.write_text('[59.5%](r.json "rows[0].accuracy") [0.59](r.json "rows[0].accuracy") '
                   '[1](missing.json "rows[0].n") [1](r.json "rows[data=snr0.1].n") [1](r.json "rows[1].n") '
                   '[1](r.json "rows[0].size")\n')
    found = problems(bad)
    assert len(found) == 6
    assert "the file has 0.5965" in found[0] and "FileNotFoundError" in found[2] and "matches 2 items" in found[3]


def test_results_files_name_no_directory_of_the_machine_that_made_them():
    """benchmarks/common.write_results makes paths relative to the checkout; files written before it must be too.
    (A checkout directly in the temporary folder checks itself only: results may name scratch folders there.)"""
    machine = f"{REPO}/" if REPO.parent == Path(tempfile.gettempdir()) else f"{REPO.parent}/"
    for path in (REPO / "benchmarks" / "results").glob("*.json"):
        assert machine not in path.read_text(), path.name

"""Checks that a figure or a page shows something: pixels that differ from a blank canvas, panels that differ from
each other, HTML that needs nothing but itself."""

import html.parser
import io

import matplotlib.image
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from emgroup.analysis import plots


def png_pixels(data: bytes) -> np.ndarray:
    """A PNG's pixels, (H, W, 3) floats in [0, 1]."""
    return matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]


def assert_not_blank(pixels, min_colours: int = 8, min_drawn: float = 0.01):
    """``pixels`` (H, W, 3) are not a blank canvas: at least ``min_colours`` distinct colours, and at least a
    fraction ``min_drawn`` of the pixels differ from the most common colour (the background)."""
    flat = np.round(np.asarray(pixels, dtype=float).reshape(-1, 3) * 255).astype(int)
    colours, counts = np.unique(flat, axis=0, return_counts=True)
    assert len(colours) >= min_colours, f"{len(colours)} colours"
    assert 1 - counts.max() / len(flat) >= min_drawn, f"{1 - counts.max() / len(flat):.4f} of the pixels drawn"


def capture_figures(monkeypatch) -> list:
    """Record every figure :mod:`emgroup.analysis.plots` saves: ``[{"title": suptitle, "panels": [(h, w, 3) pixels
    inside each axes' frame, colour bars left out], "figure": the Figure}]``."""
    captured, save = [], plots._save

    def recording(fig, path, title=None):
        data = save(fig, path, title)
        agg = FigureCanvasAgg(fig)  # the figure is closed: draw it again, at its own dpi
        agg.draw()
        canvas = np.asarray(agg.buffer_rgba())[..., :3] / 255.0
        panels = []
        for ax in fig.axes:
            if ax.get_label() == "<colorbar>" or not ax.get_visible() or (not ax.axison and not ax.images):
                continue
            box = ax.get_window_extent()
            top, bottom = canvas.shape[0] - int(box.y1), canvas.shape[0] - int(box.y0)
            panels.append(canvas[top + 3:bottom - 3, int(box.x0) + 3:int(box.x1) - 3])
        captured.append({"title": fig.get_suptitle(), "panels": panels, "figure": fig, "png": data})
        return data

    monkeypatch.setattr(plots, "_save", recording)
    return captured


def assert_panels_differ(panels):
    """Every panel shows something and no two panels are the same picture."""
    for panel in panels:
        assert_not_blank(panel, min_colours=2)
    for i in range(len(panels)):
        for j in range(i + 1, len(panels)):
            a, b = panels[i], panels[j]
            h, w = min(len(a), len(b)), min(a.shape[1], b.shape[1])
            assert np.abs(a[:h, :w] - b[:h, :w]).max() > 0.1, f"panels {i} and {j} are the same"


class _Page(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.references, self.ids, self.tags, self.commands, self.images = [], set(), [], [], []
        self._in_command = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.references += [(tag, name, value) for name, value in attrs.items()
                            if name in ("src", "href", "srcset", "data", "poster", "action", "background")]
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        self._in_command = tag == "pre" and attrs.get("class") == "command"
        if self._in_command:
            self.commands.append("")

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_command = False

    def handle_data(self, data):
        if self._in_command:
            self.commands[-1] += data


def parse_page(text: str) -> _Page:
    """The page's tags, ids, references (tag, attribute, value), <img> sources and <pre class="command"> texts."""
    page = _Page()
    page.feed(text)
    page.close()
    return page


def assert_self_contained(text: str) -> _Page:
    """The page loads nothing: every src/href is a ``data:`` URI or an anchor to an id on the page; no script,
    stylesheet link, frame or CSS ``url(``/``@import``. Returns the parsed page."""
    page = parse_page(text)
    for tag, name, value in page.references:
        if value.startswith("#"):
            assert value[1:] in page.ids, f"<{tag} {name}={value}> points at no id"
        else:
            assert value.startswith("data:"), f"<{tag} {name}={value[:60]}> is not a data: URI"
    assert not {"script", "link", "iframe", "object", "embed"} & set(page.tags)
    assert "url(" not in text and "@import" not in text
    return page

"""Option types shared by the subcommands."""

import math

import click


class FiniteFloat(click.FloatRange):
    """A float within an optional range (as ``click.FloatRange``) that is never NaN, nor ±inf unless ``allow_inf``
    (click's own float types take ``nan`` and ``inf``)."""

    def __init__(self, min=None, max=None, min_open=False, max_open=False, allow_inf=False):
        super().__init__(min, max, min_open=min_open, max_open=max_open)
        self.allow_inf = allow_inf
        if min is None and max is None:
            self.name = "float"  # help shows FLOAT, not FLOAT RANGE [x<=None]

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if math.isnan(number) or (math.isinf(number) and not self.allow_inf):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return number

    def _describe_range(self) -> str:
        return "" if self.min is None and self.max is None else super()._describe_range()

"""Server-rendered SVG charts for the dashboards: no JavaScript, nothing fetched from a CDN.

Each chart is one `<figure>`: the SVG plus, for the stacked chart, an HTML legend that can wrap
on a narrow screen. Amounts stay Decimal until they become pixel positions, and every label
that shows money goes through `format_usd`. Hovering a bar shows its `<title>` as a tooltip.
Text that comes from data (model names, usernames) is escaped with `escape` where it is placed.
"""

from __future__ import annotations

import datetime as dt
import math
from decimal import Decimal

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from keys.money import CENT, MICRO_USD, usd
from usage.models import ReconciliationRow
from usage.selectors import ActivityBucket, UsageTotals

# Colour-blind-friendly (Tableau 10); grey is kept for "other models".
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1")
OTHER_COLOUR = "#bab0ac"
UNPRICED_COLOUR = "#8e24aa"
# The width of a card on a desktop screen, so that 12px text is drawn at 12px there.
CHART_WIDTH = 1100


def format_usd(value: Decimal | None) -> str:
    """Dollars for people, as keys.money.usd writes them (two to six places, so a month of
    cheap embeddings does not read as $0.00) with a dollar sign and thousands separators:
    "$1,234.50", "-$0.25", "$0.000123"; an em dash for None."""
    if value is None:
        return "—"
    text = usd(value, thousands=True)
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def format_spend(totals: UsageTotals) -> str:
    """Spend with unpriced requests said out loud: an unpriced model never reads as $0."""
    if totals.unpriced_requests and not totals.cost_usd:
        return "unpriced"
    if totals.unpriced_requests:
        return f"{format_usd(totals.cost_usd)} + unpriced"
    return format_usd(totals.cost_usd)


def _colours(priced: list[str]) -> dict[str, str]:
    """A colour for each of the biggest spenders; when there are more than the palette holds,
    the last colour is given up so that the grey "other models" band stands apart."""
    named = priced if len(priced) <= len(PALETTE) else priced[: len(PALETTE) - 1]
    return {name: PALETTE[i] for i, name in enumerate(named)}


def _nice_step(maximum: Decimal, ticks: int = 4) -> Decimal:
    """A step of 1, 2, 2.5 or 5 times a power of ten such that `ticks` steps cover `maximum`.
    Never finer than the micro-dollar that labels show, and 2.5 only where its label is exact:
    $0.0000025 would be labelled $0.000002."""
    if maximum <= 0:
        return CENT
    raw = max(maximum / ticks, MICRO_USD)
    base = Decimal(1).scaleb(raw.adjusted())
    for multiple in (Decimal(1), Decimal(2), Decimal("2.5"), Decimal(5)):
        step = base * multiple
        if step >= raw and step == step.quantize(MICRO_USD):
            return step
    return base * 10


def _legend(items: list[tuple[str, str]]) -> str:
    entries = "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{colour}"></span>'
        f"{escape(name)}</span>"
        for name, colour in items
    )
    return f'<figcaption class="legend">{entries}</figcaption>'


def _label_every(count: int, hourly: bool) -> int:
    """Label every n-th column: about ten labels, and for hours on a whole step of the day."""
    if not hourly:
        return max(1, math.ceil(count / 10))
    return next((step for step in (1, 2, 3, 6, 12) if count / step <= 14), 24)


def _axis_label(bucket: dt.date, hourly: bool) -> str:
    if hourly and isinstance(bucket, dt.datetime) and bucket.hour:
        return f"{bucket:%H}:00"
    return f"{bucket:%b} {bucket.day}"


def _bucket_name(bucket: dt.date, hourly: bool) -> str:
    if hourly and isinstance(bucket, dt.datetime):
        return f"{bucket:%a %d %b %Y %H}:00–{bucket.hour + 1:02d}:00 UTC"
    return f"{bucket:%a %d %b %Y}"


def _bucket_attribute(bucket: dt.date, hourly: bool) -> str:
    if hourly and isinstance(bucket, dt.datetime):
        return f'data-hour="{bucket:%Y-%m-%dT%H}"'
    day = bucket.date() if isinstance(bucket, dt.datetime) else bucket
    return f'data-day="{day.isoformat()}"'


def daily_spend_chart(
    *,
    days: list[tuple[dt.date, UsageTotals]],
    models: list[UsageTotals],
    spend_by_day_model: dict[tuple[dt.date, str], Decimal],
    chart_id: str = "daily-spend",
    hourly: bool = False,
) -> SafeString:
    """Columns of spend per day (or per hour: `days` then holds each hour's start), stacked by
    model (`models` ordered by spend, most first): the biggest spenders get a colour each, the
    rest share one grey band. A column with unpriced requests gets a purple marker, since its
    column alone would understate it."""
    width, height = CHART_WIDTH, 280
    left, right, top, bottom = 72, 10, 16, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    baseline = top + plot_h

    priced = [m.label for m in models if m.cost_usd > 0]
    colours = _colours(priced)
    peak = max((totals.cost_usd for _, totals in days), default=Decimal(0))
    step = _nice_step(peak)
    ticks = max(1, math.ceil(peak / step)) if peak > 0 else 4
    ceiling = step * ticks

    def y(amount: Decimal) -> float:
        return baseline - float(amount / ceiling) * plot_h

    unit = "hour" if hourly else "day"
    parts = [
        f'<svg id="{chart_id}" class="chart chart-columns" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{chart_id}-title" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-title">Spend per {unit}, stacked by model</title>'
    ]
    for n in range(ticks + 1):
        amount = step * n
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y(amount):.1f}" '
            f'y2="{y(amount):.1f}"/><text class="axis-label" x="{left - 8}" '
            f'y="{y(amount) + 4:.1f}" text-anchor="end">{format_usd(amount)}</text>'
        )

    slot = plot_w / max(1, len(days))
    bar_w = max(1.0, slot * 0.7)
    label_every = _label_every(len(days), hourly)
    any_unpriced = False
    for i, (day, totals) in enumerate(days):
        x = left + i * slot + (slot - bar_w) / 2
        tooltip = [
            _bucket_name(day, hourly),
            f"{format_spend(totals)} · {totals.requests:,} requests",
        ]
        shapes: list[str] = []
        stacked = other = Decimal(0)
        for model in priced:
            amount = spend_by_day_model.get((day, model), Decimal(0))
            if not amount:
                continue
            tooltip.append(f"{model}: {format_usd(amount)}")
            if model in colours:
                shapes.append(_segment(x, bar_w, y(stacked + amount), y(stacked), colours[model]))
                stacked += amount
            else:
                other += amount
        if other:
            shapes.append(_segment(x, bar_w, y(stacked + other), y(stacked), OTHER_COLOUR))
            stacked += other
        if totals.unpriced_requests:
            any_unpriced = True
            tooltip.append(f"{totals.unpriced_requests:,} unpriced requests (model has no price)")
            shapes.append(
                f'<path class="unpriced-mark" d="M{x + bar_w / 2:.1f} {y(stacked) - 3:.1f}'
                f'l4 -7h-8z" fill="{UNPRICED_COLOUR}"/>'
            )
        # The group's <title> is the tooltip for the whole column, including its empty part.
        parts.append(
            f'<g class="{unit}" {_bucket_attribute(day, hourly)}>'
            f"<title>{escape(chr(10).join(tooltip))}"
            f'</title><rect class="hover" x="{left + i * slot:.1f}" y="{top}" '
            f'width="{slot:.1f}" height="{plot_h}"/>{"".join(shapes)}</g>'
        )
        if i % label_every == 0:
            parts.append(
                f'<text class="axis-label" x="{left + i * slot + slot / 2:.1f}" '
                f'y="{height - 8}" text-anchor="middle">{_axis_label(day, hourly)}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{width - right}" y1="{baseline}" y2="{baseline}"/>'
    )
    if peak == 0 and not any_unpriced:
        parts.append(
            f'<text class="empty" x="{left + plot_w / 2}" y="{top + plot_h / 2}" '
            f'text-anchor="middle">No spend in this range</text>'
        )
    parts.append("</svg>")

    legend = list(colours.items())
    if len(priced) > len(colours):
        legend.append(("other models", OTHER_COLOUR))
    if any_unpriced:
        legend.append(("unpriced requests", UNPRICED_COLOUR))
    return mark_safe(  # noqa: S308 (numbers and escaped text only)
        f'<figure class="chart-figure">{"".join(parts)}{_legend(legend)}</figure>'
    )


def _segment(x: float, width: float, y_top: float, y_bottom: float, colour: str) -> str:
    height = max(0.5, y_bottom - y_top)
    return (
        f'<rect class="segment" x="{x:.1f}" y="{y_top:.1f}" width="{width:.1f}" '
        f'height="{height:.1f}" fill="{colour}"/>'
    )


def spend_bar_chart(*, rows: list[UsageTotals], chart_id: str, title: str) -> SafeString:
    """One horizontal bar per row (a model or a user, most spend first) with its value at the
    end. A row with only unpriced requests gets a hatched stub labelled "unpriced", not $0."""
    width, row_h, pad, left, value_w = CHART_WIDTH, 28, 6, 220, 150
    height = pad * 2 + row_h * max(1, len(rows))
    bar_max = width - left - value_w
    peak = max((r.cost_usd for r in rows), default=Decimal(0))
    total = sum((r.cost_usd for r in rows), Decimal(0))
    colours = _colours([r.label for r in rows if r.cost_usd > 0])
    hatch = f"{chart_id}-hatch"

    parts = [
        f'<svg id="{chart_id}" class="chart chart-bars" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{chart_id}-title" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
        f'<defs><pattern id="{hatch}" width="6" height="6" patternUnits="userSpaceOnUse" '
        f'patternTransform="rotate(45)"><rect width="6" height="6" fill="#f3e5f5"/>'
        f'<line x1="0" y1="0" x2="0" y2="6" stroke="{UNPRICED_COLOUR}" stroke-width="3"/>'
        f"</pattern></defs>"
    ]
    for i, row in enumerate(rows):
        top = pad + i * row_h
        text_y = top + row_h / 2 + 4
        tooltip = f"{row.label}: {format_spend(row)}"
        if total and row.cost_usd:
            tooltip += f" ({row.cost_usd / total:.0%} of spend)"
        tooltip += f"\n{row.requests:,} requests · {row.tokens:,} tokens"
        if row.unpriced_requests:
            tooltip += f"\n{row.unpriced_requests:,} unpriced requests (model has no price)"
        if row.cost_usd > 0:
            bar_w, fill = max(2.0, float(row.cost_usd / peak) * bar_max), colours.get(row.label)
        elif row.unpriced_requests:
            bar_w, fill = 10.0, f"url(#{hatch})"
        else:
            bar_w, fill = 1.0, "#c8c8c8"
        label = row.label if len(row.label) <= 28 else row.label[:27] + "…"
        parts.append(
            f'<g class="row"><title>{escape(tooltip)}</title>'
            f'<rect class="hover" x="0" y="{top}" width="{width}" height="{row_h}"/>'
            f'<text class="bar-label" x="{left - 10}" y="{text_y:.1f}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect class="bar" data-label="{escape(row.label)}" x="{left}" y="{top + 5}" '
            f'width="{bar_w:.1f}" height="{row_h - 10}" rx="2" fill="{fill or OTHER_COLOUR}"/>'
            f'<text class="bar-value" x="{left + bar_w + 8:.1f}" y="{text_y:.1f}">'
            f"{escape(format_spend(row))}</text></g>"
        )
    if not rows:
        parts.append(
            f'<text class="empty" x="{width / 2}" y="{pad + row_h / 2 + 4}" '
            f'text-anchor="middle">No usage in this range</text>'
        )
    parts.append("</svg>")
    return mark_safe(  # noqa: S308 (numbers and escaped text only)
        f'<figure class="chart-figure">{"".join(parts)}</figure>'
    )


def drift_bar_chart(*, rows: list[ReconciliationRow], chart_id: str) -> SafeString:
    """The USD difference (OpenAI's minus the proxy's) of each drifting day × model of a
    reconciliation run, as bars either side of a zero line: right when OpenAI billed more."""
    width, row_h, pad, left, value_w = CHART_WIDTH, 28, 6, 320, 130
    height = pad * 2 + row_h * max(1, len(rows))
    half = (width - left - 2 * value_w) / 2
    zero = left + value_w + half
    peak = max((abs(r.usd_difference) for r in rows), default=Decimal(0))
    parts = [
        f'<svg id="{chart_id}" class="chart chart-bars" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{chart_id}-title" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-title">USD difference by day and model</title>'
        f'<line x1="{zero:.1f}" y1="0" x2="{zero:.1f}" y2="{height}" stroke="#888"/>'
    ]
    for i, row in enumerate(rows):
        top = pad + i * row_h
        text_y = top + row_h / 2 + 4
        difference = row.usd_difference
        bar_w = max(1.0, float(abs(difference) / peak) * half) if peak and difference else 1.0
        x = zero if difference >= 0 else zero - bar_w
        colour = PALETTE[3] if difference > 0 else PALETTE[0]
        sign = "+" if difference > 0 else ""
        value = f"{sign}{format_usd(difference)}"
        label = f"{row.day:%Y-%m-%d} {row.model}"
        value_x = x + bar_w + 8 if difference >= 0 else x - 8
        anchor = "start" if difference >= 0 else "end"
        parts.append(
            f'<g class="row"><title>{escape(label)}: {escape(value)} '
            f"({row.requests_difference:+,} requests)</title>"
            f'<text class="bar-label" x="{left - 10}" y="{text_y:.1f}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect class="bar" x="{x:.1f}" y="{top + 5}" width="{bar_w:.1f}" '
            f'height="{row_h - 10}" rx="2" fill="{colour}"/>'
            f'<text class="bar-value" x="{value_x:.1f}" y="{text_y:.1f}" '
            f'text-anchor="{anchor}">{escape(value)}</text></g>'
        )
    if not rows:
        parts.append(
            f'<text class="empty" x="{width / 2}" y="{pad + row_h / 2 + 4}" '
            f'text-anchor="middle">No drift: every day and model matches</text>'
        )
    parts.append("</svg>")
    return mark_safe(  # noqa: S308 (numbers and escaped text only)
        f'<figure class="chart-figure">{"".join(parts)}</figure>'
    )


def _columns_frame(
    *, chart_id: str, title: str, ticks: list[tuple[float, str]], height: int = 200
) -> tuple[list[str], float, float, float]:
    """An SVG's opening, its grid lines at `ticks` (a fraction of the plot's height, its
    label), and the plot's left edge, top and height."""
    width, left, right, top, bottom = CHART_WIDTH, 72, 10, 16, 30
    plot_h = height - top - bottom
    parts = [
        f'<svg id="{chart_id}" class="chart chart-columns" viewBox="0 0 {width} {height}" '
        f'role="img" aria-labelledby="{chart_id}-title" xmlns="http://www.w3.org/2000/svg">'
        f'<title id="{chart_id}-title">{escape(title)}</title>'
    ]
    for fraction, label in ticks:
        y = top + plot_h * (1 - fraction)
        parts.append(
            f'<line class="grid" x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}"/>'
            f'<text class="axis-label" x="{left - 8}" y="{y + 4:.1f}" text-anchor="end">'
            f"{label}</text>"
        )
    return parts, left, top, plot_h


def _x_axis(parts: list[str], buckets: list[ActivityBucket], *, hourly: bool, height: int) -> None:
    left, right = 72, 10
    slot = (CHART_WIDTH - left - right) / max(1, len(buckets))
    every = _label_every(len(buckets), hourly)
    for i, bucket in enumerate(buckets):
        if i % every == 0:
            parts.append(
                f'<text class="axis-label" x="{left + i * slot + slot / 2:.1f}" '
                f'y="{height - 8}" text-anchor="middle">{_axis_label(bucket.start, hourly)}</text>'
            )
    parts.append(
        f'<line class="axis" x1="{left}" x2="{CHART_WIDTH - right}" y1="{height - 30}" '
        f'y2="{height - 30}"/>'
    )


def _empty_note(parts: list[str], text: str, top: float, plot_h: float) -> None:
    parts.append(
        f'<text class="empty" x="{CHART_WIDTH / 2}" y="{top + plot_h / 2}" '
        f'text-anchor="middle">{text}</text>'
    )


def _nice_ms(peak: int) -> int:
    """A step of 1, 2 or 5 times a power of ten milliseconds; four of them cover `peak`."""
    raw = max(1, math.ceil(peak / 4))
    base = 10 ** (len(str(raw)) - 1)
    return next(base * m for m in (1, 2, 5, 10) if base * m >= raw)


def latency_chart(
    *, buckets: list[ActivityBucket], hourly: bool, chart_id: str = "latency"
) -> SafeString:
    """Median and 95th-percentile latency per day or hour, as two lines; a bucket with no
    timed request leaves a gap rather than reading as 0 ms."""
    height = 220
    peak = max((b.p95_ms or 0 for b in buckets), default=0)
    step = _nice_ms(peak)
    ceiling = step * 4
    ticks = [(n / 4, f"{step * n:,} ms") for n in range(5)]
    unit = "hour" if hourly else "day"
    parts, left, top, plot_h = _columns_frame(
        chart_id=chart_id, title=f"Latency per {unit}: p50 and p95", ticks=ticks, height=height
    )
    slot = (CHART_WIDTH - left - 10) / max(1, len(buckets))
    series = (("p50", "p50_ms", PALETTE[0]), ("p95", "p95_ms", PALETTE[1]))
    for name, field, colour in series:
        path, pen_down = [], False
        for i, bucket in enumerate(buckets):
            value = getattr(bucket, field)
            if value is None:
                pen_down = False
                continue
            x = left + i * slot + slot / 2
            y = top + plot_h * (1 - value / ceiling)
            path.append(f"{'L' if pen_down else 'M'}{x:.1f} {y:.1f}")
            pen_down = True
        if path:
            parts.append(
                f'<path class="line" data-series="{name}" d="{" ".join(path)}" fill="none" '
                f'stroke="{colour}" stroke-width="2"/>'
            )
    for i, bucket in enumerate(buckets):
        if bucket.p50_ms is None:
            continue
        x = left + i * slot + slot / 2
        tooltip = (
            f"{_bucket_name(bucket.start, hourly)}\np50 {bucket.p50_ms:,} ms · "
            f"p95 {bucket.p95_ms:,} ms · {bucket.requests:,} requests"
        )
        parts.append(
            f'<g class="{unit}" {_bucket_attribute(bucket.start, hourly)} '
            f'data-p50="{bucket.p50_ms}" data-p95="{bucket.p95_ms}"><title>{escape(tooltip)}'
            f'</title><rect class="hover" x="{left + i * slot:.1f}" y="{top}" '
            f'width="{slot:.1f}" height="{plot_h}"/>'
            f'<circle cx="{x:.1f}" cy="{top + plot_h * (1 - bucket.p95_ms / ceiling):.1f}" '
            f'r="2.5" fill="{PALETTE[1]}"/></g>'
        )
    _x_axis(parts, buckets, hourly=hourly, height=height)
    if not peak:
        _empty_note(parts, "No timed requests in this range", top, plot_h)
    parts.append("</svg>")
    legend = _legend([("p50 (median)", PALETTE[0]), ("p95", PALETTE[1])])
    return mark_safe(  # noqa: S308 (numbers and escaped text only)
        f'<figure class="chart-figure">{"".join(parts)}{legend}</figure>'
    )


def error_rate_chart(
    *, buckets: list[ActivityBucket], hourly: bool, chart_id: str = "error-rate"
) -> SafeString:
    """The share of requests answered with an error (status 400 and up: the proxy's refusals
    and OpenAI's errors) per day or hour, as columns."""
    height = 200
    peak = max((b.error_rate or 0 for b in buckets), default=0)
    # The axis's top: the next of 5%, 10%, 25%, 50%, 100% above the worst bucket.
    ceiling = next((c for c in (0.05, 0.1, 0.25, 0.5) if peak <= c), 1.0)
    ticks = [(n / 4, _percent(ceiling * n / 4)) for n in range(5)]
    unit = "hour" if hourly else "day"
    parts, left, top, plot_h = _columns_frame(
        chart_id=chart_id, title=f"Error rate per {unit}", ticks=ticks, height=height
    )
    slot = (CHART_WIDTH - left - 10) / max(1, len(buckets))
    bar_w = max(1.0, slot * 0.7)
    for i, bucket in enumerate(buckets):
        if not bucket.requests:
            continue
        rate = bucket.error_rate or 0.0
        bar_h = plot_h * rate / ceiling
        tooltip = (
            f"{_bucket_name(bucket.start, hourly)}\n{_percent(rate)} errors: "
            f"{bucket.errors:,} of {bucket.requests:,} requests"
        )
        parts.append(
            f'<g class="{unit}" {_bucket_attribute(bucket.start, hourly)} '
            f'data-errors="{bucket.errors}" data-requests="{bucket.requests}">'
            f"<title>{escape(tooltip)}</title>"
            f'<rect class="hover" x="{left + i * slot:.1f}" y="{top}" width="{slot:.1f}" '
            f'height="{plot_h}"/>'
            f'<rect class="segment" x="{left + i * slot + (slot - bar_w) / 2:.1f}" '
            f'y="{top + plot_h - bar_h:.1f}" width="{bar_w:.1f}" height="{max(0.0, bar_h):.1f}" '
            f'fill="{PALETTE[3]}"/></g>'
        )
    _x_axis(parts, buckets, hourly=hourly, height=height)
    if not any(b.requests for b in buckets):
        _empty_note(parts, "No requests in this range", top, plot_h)
    parts.append("</svg>")
    return mark_safe(  # noqa: S308 (numbers and escaped text only)
        f'<figure class="chart-figure">{"".join(parts)}</figure>'
    )


def _percent(share: float) -> str:
    """12%, 2.5%, 0.4%: whole percents from 10% up, one decimal below."""
    text = f"{share * 100:.1f}".removesuffix(".0")
    return f"{share * 100:.0f}%" if share >= 0.1 else f"{text}%"

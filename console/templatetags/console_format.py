"""Number formats of the researcher pages: a missing value shows as a dash, never as 0."""
from django import template

register = template.Library()
DASH = "–"


@register.filter
def pct(value, digits: int = 0) -> str:
    """0.423 -> '42 %'."""
    if value is None:
        return DASH
    return f"{value * 100:.{int(digits)}f} %"


@register.filter
def ms(value) -> str:
    """Milliseconds, rounded: '830 ms', '1.2 s'."""
    if value is None:
        return DASH
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


@register.filter
def seconds(value) -> str:
    """Seconds as '45 s' or '3 min 05 s'."""
    if value is None:
        return DASH
    value = round(value)
    return f"{value} s" if value < 60 else f"{value // 60} min {value % 60:02d} s"


@register.filter
def usd(value) -> str:
    if value is None:
        return DASH
    value = float(value)
    return f"${value:.4f}" if 0 < value < 1 else f"${value:,.2f}"


@register.filter
def num(value, digits: int = 0) -> str:
    if value is None:
        return DASH
    return f"{value:,.{int(digits)}f}"


@register.filter
def short(value: str, length: int = 12) -> str:
    return (value or "")[: int(length)]


@register.filter
def get(mapping, key):
    """mapping[key] in a template (None when absent)."""
    try:
        return mapping.get(key)
    except AttributeError:
        return None

"""Prints the README's merge-method table from the registry (`evosearch.merge.methods.METHODS`).

    .venv/bin/python scripts/method_table.py

tests/test_method_table.py fails when the README's table and this output differ."""

from __future__ import annotations

from evosearch.merge.methods import METHODS, MergeMethod, Parameter


def _parameter(p: Parameter) -> str:
    if p.required:
        return f"`{p.name}` (required)"
    if p.default is None:
        return f"`{p.name}` (optional)"
    default = str(p.default).lower() if isinstance(p.default, bool) else f"{p.default:g}"
    return f"`{p.name}` = {default}"


def _row(method: MergeMethod) -> str:
    per_model = ", ".join(_parameter(p) for p in method.parameters if p.per_model) or "-"
    shared = ", ".join(_parameter(p) for p in method.parameters if not p.per_model) or "-"
    base = "yes" if method.needs_base else "no"
    mergekit = "yes" if method.mergekit else "no (evosearch's own: recipe YAML only)"
    return f"| `{method.name}` | {per_model} | {shared} | {base} | {mergekit} | {method.reference} | {method.verified} |"


def method_table() -> str:
    lines = ["| method | per-model parameters | shared parameters | needs `base_model` | in mergekit 0.1.5 | paper "
             "| checked by the tests |", "|---|---|---|---|---|---|---|"]
    return "\n".join(lines + [_row(m) for m in METHODS.values()])


if __name__ == "__main__":
    print(method_table())

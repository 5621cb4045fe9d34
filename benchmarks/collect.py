"""Copy the latest committed results (results/<name>.md) into README.md between its two markers, so the
README's tables are always the ones the scripts wrote (nothing is typed in by hand).

    .venv/bin/python benchmarks/collect.py
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
ORDER = ("weight_sync", "async_vs_sync", "orchestration_overhead", "vs_trl", "engine_throughput",
         "learns_on_cpu_learns", "learns_on_cpu_selection_splits", "learns_on_cpu_selection_splits_with_seeds",
         "learns_on_cpu_solver", "grpo_vs_sft")  # the seed pool v2 selection pages stay in results/, labelled v2
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def collect() -> str:
    """The results section: each script's page with its headings pushed one level down, and its plot."""
    parts = []
    for name in ORDER:
        page = HERE / "results" / f"{name}.md"
        if not page.is_file():
            parts.append(f"### {name}\n\nNot run yet: `.venv/bin/python benchmarks/{name}.py`.")
            continue
        text = "\n".join(("##" + line) if line.startswith("#") else line for line in page.read_text().splitlines())
        if (HERE / "results" / f"{name}.png").is_file():
            text += f"\n\n![{name}](results/{name}.png)"
        parts.append(text)
    return "\n\n".join(parts)


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{readme}: the markers {BEGIN} and {END} are missing; put them where the results go")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n\n{collect()}\n\n{END}{tail}")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()

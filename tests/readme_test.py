"""The README's commands are the ones CI and users run."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- setup-commands -->\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md must keep its two set-up commands in the marked block"
    return [line for line in block.group(1).splitlines() if line and not line.startswith("#")]


def test_readme_has_exactly_two_setup_commands():
    assert len(readme_commands()) == 2


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert readme_commands()[1] in ci


def test_every_test_the_fault_table_names_exists():
    """docs/faults.md answers "what happens when..." with the test that shows it."""
    named = set(re.findall(r"`(test_\w+)", (ROOT / "docs" / "faults.md").read_text()))
    defined = set()
    for path in (ROOT / "tests").glob("*_test.py"):
        defined |= set(re.findall(r"^def (test_\w+)", path.read_text(), re.M))
    assert len(named) > 10
    assert named <= defined, sorted(named - defined)


def _anchor(heading: str) -> str:
    """The anchor a Markdown viewer (GitHub's rules) gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_in_the_docs_reaches_its_file_and_heading():
    """The README points into docs/ (and back) by file and heading; a renamed heading breaks it."""
    pages = [ROOT / "README.md", ROOT / "launch" / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+ (.+)$", linked.read_text(), re.M)
                if anchor not in {_anchor(h) for h in headings}:
                    broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, broken

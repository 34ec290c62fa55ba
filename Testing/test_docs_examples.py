"""The documentation's examples run, its links resolve, and the README stays a short front door.

What runs (docs/README.md, "Examples are tested"): every ```bash block of README.md and every ```bash block under a
"Quick start" heading of docs/*.md, in page order, with `bash -e` in a scratch folder of its own per page; every
```python block of those pages in that folder. Blocks marked ```bash no-run (or ```python no-run) are not run, but
each `sciseg` / `sciseg-bids` line of every bash block, run or not, must parse with the command's own parser.
The scratch folder holds what the examples name, small: `sub-01_T2w.nii.gz` (a synthetic scan), `study/` (a BIDS
dataset, two participants), `manual.csv` and `auto.csv` (morphometrics tables), and `model_SCIsegV2_r20240729.zip`,
a zip of the bundled demo model under the real model's file name: installed as `sciseg-v2` (the README does it
with its own offline-install example), the demo model is what every example using the default model runs.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from SCIsegLib.bids_app import build_parser as bids_parser
from SCIsegLib.cli import build_parser as sciseg_parser
from SCIsegLib.phantom import Acquisition, LesionSpec, make_phantom
from SCIsegLib.volume import write_image_atomic

REPOSITORY = Path(__file__).resolve().parents[1]
README = REPOSITORY / "README.md"
DOCS = REPOSITORY / "docs"
DEMO_MODEL = REPOSITORY / "Resources" / "Models" / "sciseg-demo"
MODEL_ZIP = "model_SCIsegV2_r20240729.zip"
TINY = Acquisition(spacing_mm=(2.0, 0.8, 0.8), fov_mm=(24.0, 40.0, 64.0), orientation="PSR")
#: Pages other branches add; a link to one of them may dangle until they are merged (then empty this set).
PENDING_PAGES: set[str] = set()
TWO_COMMANDS = ("bash scripts/demo.sh", "bash scripts/test.sh")


@dataclass(frozen=True)
class Block:
    """One fenced code block: its page, first line number, info string, heading chain and text."""

    page: Path
    line: int
    info: str
    headings: tuple[str, ...]
    code: str

    @property
    def language(self) -> str:
        return self.info.split()[0] if self.info else ""

    @property
    def runs(self) -> bool:
        return "no-run" not in self.info.split()[1:]


def fenced_blocks(page: Path) -> list[Block]:
    """Every ``` block of a Markdown page, with the headings above it."""
    blocks, headings, inside, start, info, body = [], {}, False, 0, "", []
    for number, line in enumerate(page.read_text().splitlines(), 1):
        if inside:
            if line.startswith("```"):
                chain = tuple(headings[level] for level in sorted(headings))
                blocks.append(Block(page, start, info, chain, "\n".join(body) + "\n"))
                inside = False
            else:
                body.append(line)
        elif line.startswith("```"):
            inside, start, info, body = True, number, line[3:].strip(), []
        elif match := re.match(r"(#{1,6})\s+(.*)", line):
            level = len(match.group(1))
            headings = {k: v for k, v in headings.items() if k < level} | {level: match.group(2).strip()}
    return blocks


def doc_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def runnable_blocks(page: Path) -> list[Block]:
    """The blocks of a page that the test runs, in page order."""
    blocks = [b for b in fenced_blocks(page) if b.language in ("bash", "python") and b.runs]
    if page != README:
        blocks = [b for b in blocks if any("quick start" in heading.lower() for heading in b.headings)]
    return blocks


def command_lines(code: str) -> list[list[str]]:
    """The ``sciseg``/``sciseg-bids`` calls of a shell block as argument lists (continuations joined,
    comments dropped, split at ``&&``, ``;`` and ``|``, redirections cut). Usage synopses (``[...]``) are skipped."""
    calls = []
    for line in code.replace("\\\n", " ").splitlines():
        if "[" in line.split("#")[0]:
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split, lexer.commenters = True, "#"
        tokens, current = list(lexer), []
        for token in [*tokens, "&&"]:
            if token in ("&&", "||", ";", "|", ">", ">>", "<", "&"):
                if current and current[0] in ("sciseg", "sciseg-bids"):
                    calls.append(current)
                current = [] if token not in (">", ">>", "<") else ["(redirect)"]
            else:
                current.append(token)
    return calls


def make_workspace(folder: Path) -> Path:
    """The small files the examples name (see the module docstring)."""
    folder.mkdir(parents=True, exist_ok=True)
    lesion = [LesionSpec(center_si_mm=0.0, length_mm=12.0, width_fraction=0.8)]
    write_image_atomic(make_phantom(1, TINY, lesion).image, folder / "sub-01_T2w.nii.gz")
    for index, subject in enumerate(("sub-01", "sub-02")):
        write_image_atomic(make_phantom(10 + index, TINY, lesion).image, folder / "study" / subject / "anat" / f"{subject}_T2w.nii.gz")
    (folder / "study" / "participants.tsv").write_text("participant_id\tsite\tais\nsub-01\tA\tC\nsub-02\tB\tD\n")
    (folder / "study" / "dataset_description.json").write_text('{"Name": "study", "BIDSVersion": "1.9.0"}\n')
    rng = np.random.default_rng(0)
    header = "subject,volume [mm3],length [mm],max_axial_damage_ratio []\n"
    manual = [(f"sub-{i:02d}", rng.uniform(100, 900), rng.uniform(5, 40), rng.uniform(0.1, 0.9)) for i in range(1, 11)]
    (folder / "manual.csv").write_text(header + "".join(f"{s},{v:.1f},{n:.1f},{d:.3f}\n" for s, v, n, d in manual))
    auto = [(s, v * rng.uniform(0.8, 1.2), n * rng.uniform(0.8, 1.2), d * rng.uniform(0.9, 1.1)) for s, v, n, d in manual]
    (folder / "auto.csv").write_text(header + "".join(f"{s},{v:.1f},{n:.1f},{d:.3f}\n" for s, v, n, d in auto))
    with zipfile.ZipFile(folder / MODEL_ZIP, "w", zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(DEMO_MODEL.rglob("*")):
            if file.is_file():
                archive.write(file, file.relative_to(DEMO_MODEL.parent))
    return folder


def environment(folder: Path, store: Path) -> dict[str, str]:
    """PATH with `sciseg` and `sciseg-bids` of this checkout; the model store of this page's run."""
    bin_folder = folder / ".bin"
    bin_folder.mkdir(exist_ok=True)
    for name, module in (("sciseg", "SCIsegLib"), ("sciseg-bids", "SCIsegLib.bids_app")):
        script = bin_folder / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m {module} "$@"\n')
        script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_folder}{os.pathsep}{os.environ['PATH']}", "PYTHONPATH": str(REPOSITORY),
            "SCISEG_MODELS_DIR": str(store)}


def run_block(block: Block, folder: Path, env: dict[str, str]) -> None:
    where = f"{block.page.relative_to(REPOSITORY)}:{block.line}"
    if block.language == "bash":
        command = ["bash", "-e", "-o", "pipefail", "-x", "-c", block.code]
    else:
        command = [sys.executable, "-c", block.code]
    result = subprocess.run(command, cwd=folder, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"the example at {where} failed (exit {result.returncode}):\n{result.stderr[-4000:]}"


@dataclass
class Session:
    """The scratch folder a reader works in: the README's examples first, then each page's quick start."""

    folder: Path
    env: dict[str, str]
    failure: str | None = None


@pytest.fixture(scope="module")
def session(tmp_path_factory: pytest.TempPathFactory) -> Session:
    """Runs the README's examples once, with a fresh model store: its own offline install provides sciseg-v2."""
    folder = make_workspace(tmp_path_factory.mktemp("docs_examples"))
    reader = Session(folder, environment(folder, folder / "store"))
    try:
        for block in runnable_blocks(README):
            run_block(block, folder, reader.env)
    except AssertionError as error:
        reader.failure = str(error)
    return reader


def test_the_readme_examples_run_in_order(session: Session) -> None:
    blocks = runnable_blocks(README)
    assert any("models install " + MODEL_ZIP in b.code for b in blocks), "the README's offline install must run"
    assert any(b.language == "python" for b in blocks)
    assert session.failure is None, session.failure
    assert (session.folder / "out" / "sub-01_T2w_sc_seg.nii.gz").is_file()
    assert (session.folder / "study" / "derivatives" / "sciseg" / "cohort_subjects.csv").is_file()


QUICK_STARTS = [page for page in sorted(DOCS.glob("*.md")) if runnable_blocks(page)]


@pytest.mark.parametrize("page", QUICK_STARTS, ids=[page.name for page in QUICK_STARTS])
def test_the_quick_start_of_a_docs_page_runs(page: Path, session: Session) -> None:
    """In the README's folder, after its examples (a quick start may use what they wrote, as a reader would)."""
    if session.failure is not None:
        pytest.fail("the README's examples failed first (see test_the_readme_examples_run_in_order)")
    for block in runnable_blocks(page):
        run_block(block, session.folder, session.env)


def test_the_pages_that_promise_a_quick_start_have_one() -> None:
    assert {page.name for page in QUICK_STARTS} >= {"command-line.md", "cohorts-and-clusters.md", "rater-guide.md"}


def test_every_sciseg_line_of_every_shell_example_parses() -> None:
    parsers = {"sciseg": sciseg_parser(), "sciseg-bids": bids_parser()}
    checked = 0
    for page in doc_pages():
        for block in fenced_blocks(page):
            if block.language not in ("bash", "sh", "shell", "console"):
                continue
            for call in command_lines(block.code):
                args = [token for token in call[1:] if token != "(redirect)"]
                try:
                    parsers[call[0]].parse_args(args)
                except SystemExit as error:
                    pytest.fail(f"{page.relative_to(REPOSITORY)}:{block.line}: `{shlex.join(call)}` does not parse ({error})")
                checked += 1
    assert checked >= 20


def test_a_wrong_example_would_be_caught() -> None:
    """The checks above fail on the examples issue 23 found wrong."""
    with pytest.raises(SystemExit):
        sciseg_parser().parse_args(command_lines("sciseg stats --a manual.csv --b auto.csv\n")[0][1:])
    with pytest.raises(SystemExit):
        sciseg_parser().parse_args(command_lines("sciseg segment a.nii.gz --folds 0 1 2 -o out/\n")[0][1:])
    snippet = 'from SCIsegLib.volume import load_image\nsegment_files([Path("x.nii.gz")])\n'
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY)}, timeout=120)
    assert result.returncode != 0 and "NameError" in result.stderr


def test_the_readme_is_a_short_front_door_with_the_two_commands() -> None:
    text = README.read_text()
    assert len(text.encode()) < 10 * 1024, f"README.md is {len(text.encode())} bytes; move detail into docs/"
    for command in TWO_COMMANDS:
        assert command in text
    assert "10-15 minutes" in text  # the test command's run time is stated
    assert "sciseg devices" in text and "docs/README.md" in text


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())
    return {_slug(m.group(1)) for m in re.finditer(r"(?m)^#{1,6}\s+(.*)$", text)}


def test_every_link_of_the_readme_and_docs_resolves() -> None:
    problems, links = [], 0
    for page in doc_pages():
        text = re.sub(r"(?ms)^```.*?^```", "", page.read_text())  # not inside code blocks
        text = re.sub(r"`[^`\n]*`", "", text)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            links += 1
            path_part, _, anchor = target.partition("#")
            resolved = (page.parent / path_part).resolve() if path_part else page
            if not resolved.exists():
                if resolved.parent == DOCS and resolved.name in PENDING_PAGES:
                    continue
                problems.append(f"{page.name}: {target} does not exist")
            elif anchor and resolved.suffix == ".md" and anchor not in _anchors(resolved):
                problems.append(f"{page.name}: {target}: no heading '#{anchor}' in {resolved.name}")
    assert not problems, "\n".join(problems)
    assert links > 30


def test_every_docs_page_is_in_the_index_and_the_readme() -> None:
    index, readme = (DOCS / "README.md").read_text(), README.read_text()
    for page in [*sorted(DOCS.glob("*.md")), *(DOCS / name for name in PENDING_PAGES)]:
        if page.name == "README.md":
            continue
        assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"
        assert f"](docs/{page.name}" in readme, f"README.md does not link docs/{page.name}"


def test_the_cli_reference_is_current() -> None:
    spec = importlib.util.spec_from_file_location("cli_reference", REPOSITORY / "scripts" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "cli-reference.md").read_text() == module.render(), "run: python scripts/cli_reference.py"

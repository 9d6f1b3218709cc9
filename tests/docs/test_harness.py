"""The page runner itself: each rule of docs/contributing.md passes what it should and fails
what it should (a harness that cannot fail would test nothing)."""

from __future__ import annotations

import pytest
from support import docblocks
from sybil.example import SybilFailure

FENCE = "`" * 3


def page(tmp_path, body: str):
    path = tmp_path / "page.md"
    path.write_text(body.replace("~~~", FENCE))
    return path


def run(tmp_path, body: str) -> None:
    docblocks.run_page(page(tmp_path, body))


def fails(tmp_path, body: str, *needles: str) -> None:
    with pytest.raises(SybilFailure) as caught:
        run(tmp_path, body)
    for needle in needles:
        assert needle in str(caught.value)


def test_console_output_matches_with_ellipsis_and_state_carries_over(tmp_path):
    run(tmp_path, """
~~~console
$ export GREETING=hello; mkdir -p sub && cd sub
$ echo "$GREETING from $(basename "$PWD")"; echo second line; echo third
hello from sub
...
third
$ ls ../configs/queues
google_idf.json
local.json
slac.json
~~~
""")


def test_console_wrong_output_fails(tmp_path):
    fails(tmp_path, "~~~console\n$ echo one\ntwo\n~~~\n", "printed:", "expected:", "two")


def test_console_failing_command_fails_unless_an_error_is_expected(tmp_path):
    fails(tmp_path, "~~~console\n$ false\n~~~\n", "exited 1")
    run(tmp_path, "~~~console\n$ pandaflow submit --dry-run missing.yaml\nError: ...\n~~~\n")


def test_not_run_scripts_need_a_reason_and_valid_commands(tmp_path):
    fails(tmp_path, "~~~bash\necho hi\n~~~\n", "must say why")
    elsewhere = "<!-- not-run: elsewhere -->\n~~~bash\n{}\n~~~\n"
    fails(tmp_path, elsewhere.format("pandaflow queues --db URL"), "No such option: --db")
    fails(tmp_path, elsewhere.format("pandaflow sumbit x.yaml"), "no command 'sumbit'")
    fails(tmp_path, elsewhere.format("cat configs/nothing.json"), "configs/nothing.json")
    script = "pandaflow --db URL queues && pandaflow pilot --cores N\nkubectl apply -k deploy/kubernetes"
    run(tmp_path, elsewhere.format(script))


def test_configuration_blocks_are_validated(tmp_path):
    fails(tmp_path, "~~~yaml\nname: x\njobs:\n  - {name: a, cores: 2.5, command: 'true'}\n~~~\n", "cores")
    fails(tmp_path, "~~~yaml\nsomething: else\n~~~\n", "no validator")
    fails(tmp_path, '~~~json\n{"queues": [{"name": "q", "max_workers": 3}]}\n~~~\n', "provider")
    run(tmp_path, '~~~json\n"provider": {"name": "slurm", "partition": "milano"}\n~~~\n')


def test_blocks_name_a_language_and_copies_match_their_file(tmp_path):
    fails(tmp_path, "~~~\nanything\n~~~\n", "must name one of")
    fails(tmp_path, "<!-- file: configs/queues/local.json -->\n~~~json\n{\"queues\": []}\n~~~\n",
          "differs from configs/queues/local.json")
    text = (docblocks.REPO / "configs/queues/local.json").read_text()
    run(tmp_path, f"<!-- file: configs/queues/local.json -->\n~~~json\n{text}~~~\n")


def test_python_blocks_share_a_namespace_and_errors_fail(tmp_path):
    run(tmp_path, "~~~python\nx = 6\n~~~\n\n<!-- invisible-code-block: python\nassert x * 7 == 42\n-->\n")
    with pytest.raises(ValueError, match="broken example"):
        run(tmp_path, "~~~python\nraise ValueError('broken example')\n~~~\n")

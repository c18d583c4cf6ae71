"""What a user sees while a search runs, through the real CLI (a subprocess, as typed).

A tiny search on the tiny dataset: one line per trial with every searched dimension and nothing
fixed, ``[k/N]``, the elapsed time and an ETA, a line per epoch of the running trial, the
teacher's epochs, no Optuna log lines; continued with ``-q -v``: no progress, Optuna's lines, and
a final time that covers both runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

SPACE = """\
name: tiny-progress
model: cnn
fixed:
  model: {variant: sm1}
  frontend: {sample_rate: 8000, hop_length: 512, n_mels: 32}
  train: {batch_size: 32, lr: 0.02}
dimensions:
  model.width: {type: categorical, choices: [0.5, 1.0, 4.0]}
  model.dropout: {type: float, low: 0.0, high: 0.3}
  train.epochs: {type: int, low: 1, high: 2}
"""


def _nas_asc(cwd, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "NAS_ASC_DEBUG"}
    r = subprocess.run(
        [sys.executable, "-m", "nas_asc", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    return r


@pytest.fixture(scope="module")
def runs(tiny_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("progress")
    (work / "space.yaml").write_text(SPACE)
    common = ["search", "--space", "space.yaml", "--data", str(tiny_root), "--threads", "1"]
    first = _nas_asc(work, *common, "--trials", "3")
    second = _nas_asc(work, "-q", "-v", *common, "--trials", "4")
    return first, second


TRIAL_LINE = re.compile(
    r"^trial (\d+) \[(\d)/3\]: width=(\S+) dropout=\S+ epochs=\d -> (.*); (\d+ s|\d+ min \d\d s) "
    r"elapsed(, ETA (\d+ s|\d+ min \d\d s) for the \d trials? left \(then the front's "
    r"test-fold measurement\))?$"
)


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_each_trial_is_one_line_with_its_searched_values_count_elapsed_and_eta(runs):
    out = runs[0].stdout.splitlines()
    lines = [m for m in map(TRIAL_LINE.match, out) if m]
    assert sorted(int(m.group(1)) for m in lines) == list(range(len(lines))), out
    rejected = [m.group(4).startswith("over budget") for m in lines]
    # --trials 3: three trained; a proposal over budget is rejected and takes no slot, so its
    # line repeats the count before it
    assert [int(m.group(2)) for m, r in zip(lines, rejected, strict=True) if not r] == [1, 2, 3], (
        out
    )
    counts = [0] + [int(m.group(2)) for m in lines]
    assert all(counts[i + 1] == counts[i] for i, r in enumerate(rejected) if r), out
    # an ETA once two trials that took time have finished (an over-budget one takes none; the
    # first trained alone is a poor guide), and none after the last trial
    took_time = [not r for r in rejected]
    expected = [sum(took_time[: i + 1]) >= 2 for i in range(len(lines))]
    expected[-1] = False
    assert [m.group(6) is not None for m in lines] == expected
    for m in lines:
        summary = m.group(4)
        if m.group(3) == "4.0":  # the widest CNN is over budget: recorded, never trained
            assert summary.startswith("over budget (") and summary.endswith("not trained")
        else:
            assert re.fullmatch(
                r"int8 \d+\.\d% \(fp32 \d+\.\d%\) on validation, [\d.]+ [kM]? ?MACs, "
                r"[\d.]+ kB, trained in \d+ s",
                summary,
            ), summary
    assert not any("variant=" in line or "n_mels=" in line for line in out)  # fixed: not shown


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_the_running_trial_shows_each_epoch(runs):
    out = runs[0].stdout
    epochs = re.findall(r"^  trial (\d+): epoch (\d)/(\d), loss \d+\.\d{3}", out, re.M)
    assert epochs, out
    assert all(int(e) <= int(n) for _, e, n in epochs)


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_no_optuna_log_lines_unless_verbose_and_quiet_is_quiet(runs):
    first, second = runs
    assert "[I " not in first.stderr and "A new study created" not in first.stderr
    assert "Trial " not in first.stderr
    # -q -v: no progress lines, Optuna's INFO lines
    assert not re.search(r"^trial \d+", second.stdout, re.M)
    assert "epoch" not in second.stdout
    assert "Trial 3 finished" in second.stderr


@pytest.mark.slow  # default suite within 10 min; CI runs it with -m slow
def test_the_summary_time_covers_the_whole_study(runs):
    first, second = runs
    assert re.search(r"^3 trials \(.*\) in \d+ s$", first.stdout, re.M), first.stdout[-800:]
    assert re.search(
        r"^4 trials \(.*\) in (\d+ s|\d+ min \d\d s) over 2 runs \(this one \d+ s\)$",
        second.stdout,
        re.M,
    ), second.stdout[-800:]


@pytest.mark.parametrize(
    ("command", "listed"),
    [
        (
            ["search", "--help"],
            ["search spaces:", "tfsepnet_recipe", "model families:", "cpmobile"],
        ),
        (["complexity", "--help"], ["model families:", "mobilenetv2_ca"]),
    ],
)
# two subprocesses (9 s)
@pytest.mark.slow
def test_help_lists_the_spaces_and_families(command, listed, tmp_path):
    r = _nas_asc(tmp_path, *command)
    text = " ".join(r.stdout.split())
    for item in listed:
        assert item in text


def test_the_eta_starts_at_the_second_trained_trial_and_says_what_it_covers():
    import io

    from nas_asc.progress import ConsoleReporter, TrialReport

    out = io.StringIO()
    reporter = ConsoleReporter(live=False, stream=out)
    reporter.search_started(total=4, done=0)

    def finish(number: int, state: str, done: int) -> str:
        reporter.trial_finished(TrialReport(number, state, {}, "x", done))
        return out.getvalue().splitlines()[-1]

    assert "ETA" not in finish(0, "infeasible", 0)  # over budget: took no time
    assert "ETA" not in finish(1, "trained", 1)  # one trained trial: a poor guide
    line = finish(2, "trained", 2)
    assert line.endswith("for the 2 trials left (then the front's test-fold measurement)")
    assert "for the 1 trial left" in finish(3, "trained", 3)
    assert "ETA" not in finish(4, "trained", 4)  # nothing left

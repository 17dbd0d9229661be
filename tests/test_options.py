"""utils/parse_options.sh and utils/stage.sh: Kaldi semantics, help, stage records."""

import subprocess
import textwrap


def _script(tmp_path, repo_root, body: str):
    script = tmp_path / "s.sh"
    script.write_text(
        textwrap.dedent(
            f"""\
            #!/usr/bin/env bash
            set -euo pipefail
            help_message="Usage: s.sh"
            stage=0        # first stage
            stop_stage=9   # last stage
            nj=2           # jobs
            force=false    # redo
            exp={tmp_path}/exp
            . {repo_root}/utils/parse_options.sh
            . {repo_root}/utils/stage.sh
            """
        )
        + textwrap.dedent(body)
    )
    return script


def _run(script, *args):
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True)


def test_options_set_variables_and_keep_positionals(tmp_path, repo_root):
    s = _script(tmp_path, repo_root, 'echo "$stage $stop_stage $nj | $*"\n')
    r = _run(s, "--stage", "2", "--stop-stage=5", "--nj", "4", "a", "b")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "2 5 4 | a b"


def test_unknown_option_lists_valid_ones(tmp_path, repo_root):
    r = _run(_script(tmp_path, repo_root, "true\n"), "--bogus", "1")
    assert r.returncode != 0
    assert "unknown option '--bogus'" in r.stderr
    assert "--stop-stage" in r.stderr and "--nj" in r.stderr


def test_help_prints_message_options_and_defaults(tmp_path, repo_root):
    r = _run(_script(tmp_path, repo_root, "true\n"), "--help")
    assert r.returncode == 0
    assert "Usage: s.sh" in r.stdout
    assert "--nj" in r.stdout and "(default: 2)" in r.stdout and "jobs" in r.stdout
    assert "help-message" not in r.stdout


def test_boolean_option_rejects_other_values(tmp_path, repo_root):
    r = _run(_script(tmp_path, repo_root, "true\n"), "--force", "yes")
    assert r.returncode != 0 and "true or false" in r.stderr


def test_stage_runner_records_skips_and_reports_failure(tmp_path, repo_root):
    body = f"""\
    run_stage 1 one bash -c 'echo ran-one >> {tmp_path}/count'
    run_stage 2 two bash -c 'echo some error text >&2; exit ${{FAIL:-0}}'
    """
    s = _script(tmp_path, repo_root, body)
    assert _run(s).returncode == 0
    r = _run(s)
    assert r.returncode == 0 and "done before, skipping" in r.stdout
    assert (tmp_path / "count").read_text() == "ran-one\n"
    r = subprocess.run(
        ["bash", str(s), "--force", "true"],
        capture_output=True,
        text=True,
        env={"FAIL": "3", "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode != 0
    assert "stage 2 (two) failed" in r.stderr
    assert "stage2.two.log" in r.stderr and "some error text" in r.stderr
    # --stage/--stop-stage restrict what runs
    r = _run(s, "--stage", "3")
    assert r.returncode == 0 and "stage" not in r.stdout


def test_stage_reruns_when_a_named_file_changes(tmp_path, repo_root):
    conf = tmp_path / "a.yaml"
    conf.write_text("margin: 0.2\n")
    s = _script(
        tmp_path, repo_root, f"run_stage 1 one bash -c 'echo ran >> {tmp_path}/count' {conf}\n"
    )
    assert _run(s).returncode == 0 and _run(s).returncode == 0
    assert (tmp_path / "count").read_text() == "ran\n"
    conf.write_text("margin: 0.3\n")
    assert _run(s).returncode == 0
    assert (tmp_path / "count").read_text() == "ran\nran\n"


def test_recipe_rejects_a_stage_that_is_not_a_number(repo_root):
    r = subprocess.run(
        [str(repo_root / "egs/olr/run.sh"), "--stage", "4-5"], capture_output=True, text=True
    )
    assert r.returncode != 0 and "take stage numbers" in r.stderr


def test_stage_reruns_when_a_watched_input_changes(tmp_path, repo_root):
    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "train/utt2lang").write_text("u1 zh-cn\n")
    body = f"run_stage 0 import --watch {corpus} bash -c 'echo ran >> {tmp_path}/count'\n"
    s = _script(tmp_path, repo_root, body)
    assert _run(s).returncode == 0
    r = _run(s)
    assert r.returncode == 0 and "done before, skipping" in r.stdout
    assert (tmp_path / "count").read_text() == "ran\n", "--watch is not passed to the command"
    (corpus / "train/utt2lang").write_text("u1 zh-cn\nu2 ru-ru\n")  # a user fixes the release
    r = _run(s)
    assert r.returncode == 0 and "done before" not in r.stdout, r.stdout
    assert (tmp_path / "count").read_text() == "ran\nran\n"
    (corpus / "wav").mkdir()
    (corpus / "wav/u2.wav").write_bytes(b"x")  # a file added deeper down counts too
    assert _run(s).returncode == 0
    assert (tmp_path / "count").read_text() == "ran\nran\nran\n"


def test_stage_logs_of_the_last_attempts_are_kept(tmp_path, repo_root):
    s = _script(tmp_path, repo_root, "run_stage 4 train bash -c 'echo attempt-$ATTEMPT'\n")
    logs = tmp_path / "exp/log"
    for attempt in range(1, 6):
        r = subprocess.run(
            ["bash", str(s), "--force", "true"],
            capture_output=True,
            text=True,
            env={"ATTEMPT": str(attempt), "PATH": "/usr/bin:/bin"},
        )
        assert r.returncode == 0, r.stderr
    assert "attempt-5" in (logs / "stage4.train.log").read_text()
    for k in (1, 2, 3):
        assert f"attempt-{5 - k}" in (logs / f"stage4.train.log.{k}").read_text()
    assert not (logs / "stage4.train.log.4").exists()


def test_unreadable_watched_input_warns_and_still_runs(tmp_path, repo_root):
    corpus = tmp_path / "corpus"
    (corpus / "train").mkdir(parents=True)
    (corpus / "train/utt2lang").write_text("u1 zh-cn\n")
    (corpus / "train/loop").symlink_to(corpus)  # find -L fails on it
    body = f"run_stage 0 import --watch {corpus} bash -c 'echo ran >> {tmp_path}/count'\n"
    s = _script(tmp_path, repo_root, body)
    r = _run(s)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"warning: --watch {corpus}: some of it cannot be read" in r.stderr
    r = _run(s)
    assert r.returncode == 0 and "done before, skipping" in r.stdout, r.stdout + r.stderr
    (corpus / "train/utt2lang").write_text("u1 zh-cn\nu2 ru-ru\n")  # the readable part counts
    assert _run(s).returncode == 0
    assert (tmp_path / "count").read_text() == "ran\nran\n"


def test_recipe_jobs_run_at_once_with_shared_cores_and_name_failures(tmp_path, repo_root):
    """utils/recipe.sh's stage 4-5 runner: --jobs runs at once, each with APM_CORES = cores /
    jobs; each keeps its log and record (a rerun skips it); a failed one does not stop the
    others and is named with its log; --jobs 1 runs in the foreground, APM_CORES unset."""
    body = f"""\
    . {repo_root}/utils/recipe.sh
    jobs=${{JOBS:-2}}
    recipe_jobs_start 3
    for s in a b c; do
      recipe_job 4 "train_$s" bash -c "echo cores=\\${{APM_CORES:-unset}} $s; [ $s != ${{FAIL:-none}} ]"
    done
    recipe_jobs_wait 4
    """
    s = _script(tmp_path, repo_root, body)
    r = _run(s)
    cores = max(1, int(subprocess.run(["nproc"], capture_output=True, text=True).stdout) // 2)
    assert r.returncode == 0, r.stderr
    for name in "abc":
        assert f"[train_{name}] cores={cores} {name}" in r.stdout
        log = (tmp_path / "exp/log" / f"stage4.train_{name}.log").read_text()
        assert f"cores={cores} {name}" in log
    r = _run(s)
    assert r.returncode == 0 and r.stdout.count("done before, skipping") == 3
    r = subprocess.run(["bash", str(s), "--force", "true"], capture_output=True, text=True,
                       env={"FAIL": "b", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert r.returncode == 1
    assert "stage 4: 1 of 3 runs failed" in r.stderr
    assert f"train_b (log: {tmp_path}/exp/log/stage4.train_b.log)" in r.stderr
    assert (tmp_path / "exp/.done/stage4.train_c").exists()  # the others finished
    r = subprocess.run(["bash", str(s), "--force", "true"], capture_output=True, text=True,
                       env={"JOBS": "1", "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert r.returncode == 0 and "cores=unset a" in r.stdout and "[train_a]" not in r.stdout

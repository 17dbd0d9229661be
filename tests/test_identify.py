"""Using a trained system: the model package written after stage 7, `apm.bin.identify` and
`LanguageIdentifier`, checked against the recipe's own stage 5-6 scores on the tiny corpus."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO
from scipy.signal import resample_poly

from apm.infer.package import FILES, load_package

SYSTEM = "apm_am"
BACKENDS = ("lr", "cosine", "classifier")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv/bin'}:{env['PATH']}"
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.fixture
def recipe(tiny_recipe) -> Path:
    """The directory holding the shared tiny recipe run's data/ and exp/ (laid out like
    egs/olr): stages 0-7 and the model packages (conftest.py's tiny_recipe)."""
    return tiny_recipe.root


def _wav_scp(recipe: Path, task: str) -> dict[str, str]:
    lines = (recipe / "data" / task / "wav.scp").read_text().splitlines()
    return dict(line.split(maxsplit=1) for line in lines)


def _scores(path: Path) -> dict[str, np.ndarray]:
    lines = path.read_text().splitlines()[1:]
    return {ln.split()[0]: np.array(ln.split()[1:], dtype=np.float64) for ln in lines}


def _identify(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "apm.bin.identify", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_package_is_self_contained_and_weights_only(recipe, tmp_path):
    model = recipe / "exp" / SYSTEM / "model"
    assert sorted(p.name for p in model.iterdir()) == sorted(FILES)
    torch.load(model / "model.pt", weights_only=True)  # tensors and plain values only
    with np.load(model / "backend.npz", allow_pickle=False) as arrays:  # float arrays only
        assert all(arrays[k].dtype == np.float64 for k in arrays.files)
    for name in ("backend.json", "backend.npz"):  # stage 6's fitted back-end, copied as is
        assert (model / name).read_bytes() == (
            recipe / "exp" / SYSTEM / "backend" / name
        ).read_bytes()
    languages = (recipe / "exp" / SYSTEM / "languages.txt").read_text().split()
    assert (model / "languages.txt").read_text().split() == languages
    settings = json.loads((model / "package.json").read_text())
    assert settings["primary"] == "lr" and sorted(settings["backends"]) == sorted(BACKENDS)
    assert settings["features"]["fbank"]["num_mel_bins"] == 40 and settings["cmn"]
    # the default unknown threshold was chosen on the dev sets (run.sh passes them)
    assert "dev sets dev_full dev_short (24 utterances)" in settings["unknown_threshold_source"]
    assert 0 <= settings["unknown_threshold"] < 1
    # mini-OLR has no open-set dev set: the package says the threshold was never checked
    assert settings["unknown_threshold_checked_on_unknown_languages"] is False
    assert "never checked on utterances of languages" in settings["unknown_threshold_source"]
    assert settings["calibrated_backends"] == sorted(BACKENDS)
    card = (model / "MODEL.md").read_text()
    assert "eSpeak" in card and "Real human speech is out of domain" in card
    assert "never checked" in card and "calibrated: multiclass logistic regression" in card
    results = json.loads((recipe / "exp" / SYSTEM / "results.json").read_text())
    assert all(lang in card for lang in languages)
    assert f"| task_full | {results['tasks']['task_full']['cavg']} |" in card
    # Loadable after the recipe's tree is gone: a copy elsewhere identifies alone.
    moved = tmp_path / "moved_model"
    subprocess.run(["cp", "-r", str(model), str(moved)], check=True)
    assert list(load_package(moved).backend.models) == list(BACKENDS)


@pytest.mark.slow
@pytest.mark.parametrize("task", ["task_full", "task_short"])
def test_identify_matches_stage_6_scores(recipe, task):
    """Same features, VAD, CMN, x-vector and back-end as stages 2, 5 and 6: the package's
    scores on the wavs equal the score files of stage 6, for every back-end."""
    from apm import LanguageIdentifier

    wavs = _wav_scp(recipe, task)
    for backend in BACKENDS:
        suffix = "score" if backend == "lr" else f"{backend}.score"
        expected = _scores(recipe / "exp" / SYSTEM / "scores" / f"{task}.{suffix}")
        calibrated = _scores(recipe / "exp" / SYSTEM / "scores" / "calibrated" / f"{task}.{suffix}")
        lid = LanguageIdentifier.from_dir(recipe / "exp" / SYSTEM / "model", backend=backend)
        utts = sorted(expected)
        results = lid.identify_batch([wavs[u] for u in utts])
        for utt, result in zip(utts, results, strict=True):
            np.testing.assert_allclose(result.scores, expected[utt], atol=1e-4, err_msg=utt)
            post = np.array(list(result.posteriors.values()))
            best = lid.languages[post.argmax()]
            assert abs(post.sum() - 1) < 1e-9 and result.top[0] == (best, post.max())
            unknown = post.max() < lid.unknown_threshold  # the package's dev-chosen default
            assert result.language == ("unknown" if unknown else best)
            # the posteriors are the calibrated ones stage 6 writes (log-posteriors)
            np.testing.assert_allclose(np.log(post), calibrated[utt], atol=1e-4)


@pytest.mark.slow
def test_package_backend_gives_stage_6_scores_exactly(recipe, tmp_path):
    """The package's back-end on stage 5's x-vectors and logits writes the very score files of
    stage 6, raw and calibrated: one saved model, no refit, no second implementation."""
    import kaldiio

    from apm.metrics.scorefile import write_matrix

    backend = load_package(recipe / "exp" / SYSTEM / "model").backend
    scores_dir = recipe / "exp" / SYSTEM / "scores"
    for task in ("dev_full", "task_full", "task_open"):
        vectors = {}
        for kind, scp in (("xvector", "xvector.scp"), ("logits", "logits.scp")):
            table = dict(
                kaldiio.load_scp_sequential(str(recipe / f"exp/{SYSTEM}/xvectors/{task}/{scp}"))
            )
            vectors[kind] = table
        for name in BACKENDS:
            suffix = "score" if name == "lr" else f"{name}.score"
            utts = [
                ln.split()[0]
                for ln in (scores_dir / f"{task}.{suffix}").read_text().splitlines()[1:]
            ]
            inputs = np.stack([vectors[backend.input(name)][u] for u in utts])
            raw = backend.scores(name, inputs)
            out = tmp_path / "rescored"
            write_matrix(out / "raw", backend.languages, utts, raw)
            write_matrix(out / "cal", backend.languages, utts, backend.calibrated(name, raw))
            assert (out / "raw").read_text() == (scores_dir / f"{task}.{suffix}").read_text()
            assert (out / "cal").read_text() == (
                scores_dir / "calibrated" / f"{task}.{suffix}"
            ).read_text()


@pytest.mark.slow
def test_cli_accuracy_on_task_full_equals_stage_7_calibrated(recipe):
    r = _identify("--model", f"exp/{SYSTEM}/model", "--wav-scp", "data/task_full/wav.scp",
                  "--format", "json", "--top-k", "2", "--unknown-threshold", "0", cwd=recipe)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    answers = [json.loads(line) for line in r.stdout.splitlines()]
    utt2lang = dict(
        ln.split() for ln in (recipe / "data/task_full/utt2lang").read_text().splitlines()
    )
    assert sorted(a["input"] for a in answers) == sorted(utt2lang)
    assert all(len(a["top"]) == 2 and a["top"][0][0] == a["language"] for a in answers)
    accuracy = 100 * np.mean([a["language"] == utt2lang[a["input"]] for a in answers])
    results = json.loads((recipe / "exp" / SYSTEM / "results.json").read_text())
    # identify answers by the calibrated posteriors: stage 7's accuracy of the calibrated scores
    assert abs(accuracy - results["tasks"]["task_full"]["calibrated_accuracy"]) < 0.01


@pytest.mark.slow
def test_cli_any_rate_stereo_pipes_and_bad_files(recipe, tmp_path):
    from apm import LanguageIdentifier

    wav = _wav_scp(recipe, "task_full")["id-id_te00_full0000"]
    samples, rate = sf.read(wav, dtype="float32")
    assert rate == 16000
    sf.write(tmp_path / "stereo16k.wav", np.stack([samples, samples], axis=1), 16000)
    sf.write(
        tmp_path / "stereo44k.flac", np.stack([resample_poly(samples, 441, 160)] * 2, axis=1), 44100
    )
    sf.write(tmp_path / "8k.ogg", resample_poly(samples, 1, 2), 8000)
    (tmp_path / "bad.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros(10, dtype=np.float32), 16000)
    (tmp_path / "clips").mkdir()
    scp = tmp_path / "wav.scp"
    scp.write_text(f"piped cat {wav} |\nfailing false |\n")
    names = [
        wav,
        "stereo16k.wav",
        "stereo44k.flac",
        "8k.ogg",
        "bad.wav",
        "missing.wav",
        "empty.wav",
        "clips",
    ]
    r = _identify("--model", str(recipe / "exp" / SYSTEM / "model"), "--format", "json",
                  "--wav-scp", str(scp), *names, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 1
    out = {a["input"]: a for a in map(json.loads, r.stdout.splitlines())}
    assert list(out) == [*names, "piped", "failing"]  # every input answered, in order
    for bad in ("bad.wav", "missing.wav", "empty.wav", "clips", "failing"):
        assert "error" in out[bad] and f"ERROR {bad}: " in r.stderr
    assert (
        "no such file" in out["missing.wav"]["error"] and "too short" in out["empty.wav"]["error"]
    )
    assert "is a directory, not an audio file" in out["clips"]["error"]
    assert "5 of 10 inputs failed" in r.stderr
    lid = LanguageIdentifier.from_dir(recipe / "exp" / SYSTEM / "model")
    direct = lid.identify(wav)
    for same in ("stereo16k.wav", "piped"):  # identical samples: identical answers
        assert out[same]["posteriors"] == out[wav]["posteriors"]
    # the CLI prints 6 decimals: the library's value, rounded (a 1e-6 step either way)
    assert out[wav]["posteriors"] == pytest.approx(direct.posteriors, abs=1.5e-6)
    for resampled in ("stereo44k.flac", "8k.ogg"):
        assert out[resampled]["top"][0][0] in lid.languages
    # the API takes arrays too (any rate, [N] or [N, channels])
    arr = lid.identify(np.stack([samples, samples], axis=1), sample_rate=16000)
    np.testing.assert_allclose(arr.scores, direct.scores, atol=1e-6)
    assert lid.embed(wav).shape == direct.embedding.shape


@pytest.mark.slow
def test_unknown_threshold_and_table(recipe):
    wav = _wav_scp(recipe, "task_full")["id-id_te00_full0000"]
    model = str(recipe / "exp" / SYSTEM / "model")
    r = _identify("--model", model, "--format", "json", "--unknown-threshold", "1", wav, cwd=recipe)
    answer = json.loads(r.stdout)
    assert r.returncode == 0 and (answer["language"] == "unknown") == (answer["posterior"] < 1)
    r = _identify("--model", model, "--top-k", "1", wav, cwd=recipe)
    assert r.returncode == 0, r.stderr
    header, line = r.stdout.splitlines()
    assert header.startswith("# input") and line.split("\t")[0] == wav
    # mini-OLR has no open-set dev set: identify says the threshold was never checked
    assert "was never checked on languages the model does not know" in r.stderr
    r = _identify("--model", str(recipe / "nowhere"), wav, cwd=recipe)
    assert r.returncode == 1 and "not a model package" in r.stderr


@pytest.mark.slow
def test_readme_snippet_runs_as_written(recipe):
    """README "Use a trained model": the Python snippet (tests/readme_use_model.py), run
    from the recipe directory."""
    snippet = (REPO / "tests/readme_use_model.py").read_text()
    r = subprocess.run([sys.executable, "-c", snippet], cwd=recipe, env=_env(),
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.splitlines()
    assert len(lines) == 5, r.stdout
    languages = (recipe / "exp" / SYSTEM / "languages.txt").read_text().split()
    # What holds on any machine, not what a tiny model answers: the answer is a known language
    # or "unknown" (below the package's dev-chosen threshold), with the best posterior; the
    # posteriors are a distribution over languages.txt; the top line names the best language.
    language, posterior = lines[0].split()
    posteriors = {
        k: float(v) for k, v in re.findall(r"'([^']+)': (?:np\.float\d+\()?([-+0-9.e]+)", lines[1])
    }
    assert list(posteriors) == languages and abs(sum(posteriors.values()) - 1) < 1e-5
    best = max(posteriors, key=posteriors.get)
    assert abs(float(posterior) - posteriors[best]) < 1e-6
    assert language in (best, "unknown")
    assert lines[4].startswith(f"('{best}', ") and lines[2] == lines[3] == "(32,)"


@pytest.mark.slow
def test_export_onnx_and_torchscript_match_pytorch(recipe, tmp_path):
    """Both exports give the package's posteriors and x-vector to 1e-4 on real utterances of
    several lengths (none of them the traced example's length)."""
    import onnxruntime

    from apm import LanguageIdentifier
    from apm.infer.export import EXAMPLE_FRAMES

    model = recipe / "exp" / SYSTEM / "model"
    for fmt, name in (("onnx", "lid.onnx"), ("torchscript", "lid.pt")):
        cmd = [sys.executable, "-m", "apm.bin.export", "--model", str(model), "--format", fmt,
               "--output", str(tmp_path / name)]  # fmt: skip
        r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
    session = onnxruntime.InferenceSession(
        str(tmp_path / "lid.onnx"), providers=["CPUExecutionProvider"]
    )
    extra = {"languages.txt": ""}
    scripted = torch.jit.load(str(tmp_path / "lid.pt"), _extra_files=extra)
    lid = LanguageIdentifier.from_dir(model)
    assert session.get_modelmeta().custom_metadata_map["languages"].split() == lid.languages
    assert extra["languages.txt"].decode().split() == lid.languages
    wavs = [*_wav_scp(recipe, "task_short").values()][:3] + [
        *_wav_scp(recipe, "task_full").values()
    ][:3]
    lengths = set()
    for wav in wavs:
        feats = lid.features(lid.load(wav))
        assert len(feats) <= lid.settings["extract"]["max_chunk_frames"]
        lengths.add(len(feats))
        expected = lid.identify(wav)
        posteriors = np.array(list(expected.posteriors.values()))
        onnx_post, onnx_emb = session.run(None, {"feats": feats[None].astype(np.float32)})
        with torch.no_grad():
            ts_post, ts_emb = (t.numpy() for t in scripted(torch.from_numpy(feats[None])))
        for post, emb in ((onnx_post, onnx_emb), (ts_post, ts_emb)):
            np.testing.assert_allclose(post[0], posteriors, atol=1e-4)
            np.testing.assert_allclose(emb[0], expected.embedding, atol=1e-4)
    assert len(lengths) > 2 and EXAMPLE_FRAMES not in lengths


@pytest.mark.slow
def test_corrupt_package_files_are_clear_errors(recipe, tmp_path):
    """A damaged package.json or back-end file: an ApmError naming it and how to rebuild
    the package, not a JSONDecodeError or KeyError traceback."""
    from apm import LanguageIdentifier
    from apm.utils import ApmError

    cases = {
        "package.json": (b'{"format": "apm-mod', r"package.json: corrupt, not JSON"),
        "backend.json": (b"\x00\xff", r"backend.json: corrupt, not JSON"),
        "backend.npz": (b"PK\x03\x04", r"backend.npz: does not match .*backend.json"),
    }
    for name, (content, message) in cases.items():
        model = tmp_path / name
        shutil.copytree(recipe / "exp" / SYSTEM / "model", model)
        (model / name).write_bytes(content)
        with pytest.raises(ApmError, match=message + r".*rebuild the package: python -m "
                           r"apm.bin.package_model"):  # fmt: skip
            LanguageIdentifier.from_dir(model)
    r = _identify("--model", str(tmp_path / "package.json"), "x.wav", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr and "package.json: corrupt" in r.stderr


def test_unknown_threshold_is_chosen_on_open_set_dev_sets(tmp_path):
    """With an open-set dev set among the dev sets, the threshold is chosen on it alone and
    marked as checked on unknown languages; with closed-set ones only, it says it never was."""
    from test_backend import make_system

    from apm.backend import BackendConfig, score_system
    from apm.backend.scoring import load_system_backend
    from apm.infer.package import NOT_CHECKED, choose_unknown_threshold

    system = make_system(tmp_path)
    score_system(system, tmp_path / "data", "train", ["task_full", "task_open"],
                 BackendConfig(), dev_sets=["task_full"])  # fmt: skip
    fb = load_system_backend(system)
    data = tmp_path / "data"
    threshold, source, checked = choose_unknown_threshold(
        system, data, ["task_full", "task_open"], fb
    )
    assert checked and "open-set dev sets task_open (40 utterances)" in source
    assert NOT_CHECKED not in source and 0 < threshold < 1
    threshold, source, checked = choose_unknown_threshold(system, data, ["task_full"], fb)
    assert not checked and source.endswith(NOT_CHECKED) and "dev sets task_full (30" in source
    assert choose_unknown_threshold(system, data, [], fb)[2] is False


def test_equal_error_threshold():
    from apm.infer.package import equal_error_threshold

    keep = np.array([0.9, 0.8, 0.7, 0.6])
    reject = np.array([0.65, 0.5, 0.4, 0.3])
    t, miss, false_accept = equal_error_threshold(keep, reject)
    assert t == 0.65 and miss == 0.25 and false_accept == 0.25
    assert equal_error_threshold(np.array([0.9]), np.array([0.2]))[1:] == (0.0, 0.0)


def test_import_apm_stays_cheap():
    code = "import sys, apm; assert 'torch' not in sys.modules; apm.LanguageIdentifier"
    assert subprocess.run([sys.executable, "-c", code], env=_env()).returncode == 0


def test_readme_snippet_is_tests_copy():
    """Once README has its "Use a trained model" section, its Python block is the snippet
    tests/readme_use_model.py runs (without the file's leading comment lines)."""
    readme = (REPO / "README.md").read_text()
    if "## Use a trained model" not in readme:
        pytest.skip("README has no 'Use a trained model' section yet")
    section = readme.split("## Use a trained model", 1)[1].split("\n## ", 1)[0]
    block = section.split("```python\n", 1)[1].split("```", 1)[0]
    lines = (REPO / "tests/readme_use_model.py").read_text().splitlines(keepends=True)
    assert block == "".join(ln for ln in lines if not ln.startswith("#"))

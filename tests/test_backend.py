"""apm.backend and steps/score.sh on a synthetic system (clustered random x-vectors)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import kaldiio
import numpy as np
import pytest

from apm.backend import BackendConfig, EmbeddingProcessor, load_backend_config, score_system
from apm.backend.models import KaldiLda
from apm.data.trials import Trial, read_trials, write_trials
from apm.metrics import align_trials, challenge_cavg, read_scores
from apm.utils import ApmError, write_kv

LANGS = ["ja-jp", "ru-ru", "zh-cn"]


def _save_scp(directory: Path, name: str, vectors: dict[str, np.ndarray]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    kaldiio.save_ark(
        str(directory / f"{name}.ark"),
        {k: v.astype(np.float32) for k, v in vectors.items()},
        scp=str(directory / f"{name}.scp"),
    )


def make_system(root: Path, seed: int = 0, dim: int = 16, n_train: int = 40) -> Path:
    """data/{train,task_full,task_open} and exp/sys with x-vectors, logits and languages.txt.

    task_open adds utterances of an unknown language `xx`.
    """
    rng = np.random.default_rng(seed)
    centres = {lang: rng.normal(0, 3, dim) for lang in LANGS + ["xx"]}
    system = root / "exp" / "sys"
    system.mkdir(parents=True)
    (system / "languages.txt").write_text("\n".join(LANGS) + "\n")

    def make_set(name: str, langs: list[str], n: int) -> None:
        utt2lang = {f"{name}_{lang}_{i:03d}": lang for lang in langs for i in range(n)}
        write_kv(root / "data" / name / "utt2lang", utt2lang)
        xv = {u: centres[lang] + rng.normal(0, 1.5, dim) for u, lang in utt2lang.items()}
        logits = {u: rng.normal(0, 1, len(LANGS)) for u in utt2lang}
        for u, lang in utt2lang.items():
            if lang in LANGS:
                logits[u][LANGS.index(lang)] += 2.0
        _save_scp(system / "xvectors" / name, "xvector", xv)
        _save_scp(system / "xvectors" / name, "logits", logits)
        if name != "train":
            trials = [Trial(t, u, t == lang) for u, lang in sorted(utt2lang.items()) for t in LANGS]
            write_trials(root / "data" / name / "trials", trials)

    make_set("train", LANGS, n_train)
    make_set("task_full", LANGS, 10)
    make_set("task_open", LANGS + ["xx"], 10)
    return system


def _cavg(root: Path, task: str, name: str, open_set: bool = False) -> float:
    trials = root / "data" / task / "trials"
    scores = read_scores(root / "exp" / "sys" / "scores" / name)
    return challenge_cavg(align_trials(read_trials(trials), scores, trials), open_set).cavg


def test_all_backends_write_olr_matrices(tmp_path):
    system = make_system(tmp_path)
    conf = BackendConfig(primary="lr", backends=["lr", "cosine", "classifier"])
    written = score_system(system, tmp_path / "data", "train", ["task_full", "task_open"], conf)
    names = sorted(p.name for p in written)
    assert names == sorted(
        f"{t}{b}.score" for t in ("task_full", "task_open") for b in ("", ".cosine", ".classifier")
    )
    s = read_scores(system / "scores" / "task_full.score")
    assert s.languages == LANGS and s.utts == sorted(s.utts) and len(s.utts) == 30
    lr = s.matrix
    assert np.allclose(np.exp(lr).sum(axis=1), 1.0, atol=1e-4)  # log-posteriors
    # well separated clusters: every back-end recognises the languages
    for name in ("task_full.score", "task_full.cosine.score", "task_full.classifier.score"):
        assert _cavg(tmp_path, "task_full", name) < 0.2, name
    assert _cavg(tmp_path, "task_open", "task_open.score", open_set=True) < 0.3
    assert load_backend_config(system / "scores" / "backend.yaml") == conf


def test_backend_registry_adds_a_backend_with_one_class_and_one_line(tmp_path, monkeypatch):
    """A registered back-end is accepted by the config and scored by stage 6 like the
    shipped ones, on the input it names."""
    from apm.backend.models import BACKENDS

    class Nearest:
        """Minus the Euclidean distance to each language's mean processed x-vector."""

        name, input = "nearest", "xvector"

        @classmethod
        def from_config(cls, conf):
            return cls()

        def fit(self, z, labels):
            self.means = np.stack([z[labels == k].mean(axis=0) for k in range(labels.max() + 1)])
            return self

        def __call__(self, z):
            return -np.linalg.norm(z[:, None, :] - self.means[None], axis=2)

        def state(self):
            return {"means": self.means}

        def load_state(self, arrays):
            self.means = arrays["means"]
            return self

    monkeypatch.setitem(BACKENDS, "nearest", Nearest)
    (tmp_path / "b.yaml").write_text("primary: nearest\nbackends: [nearest, classifier]\n")
    conf = load_backend_config(tmp_path / "b.yaml")
    system = make_system(tmp_path)
    written = score_system(system, tmp_path / "data", "train", ["task_full"], conf)
    assert sorted(p.name for p in written) == ["task_full.classifier.score", "task_full.score"]
    assert _cavg(tmp_path, "task_full", "task_full.score") < 0.2


def test_lda_dimension_capped_by_languages():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 20)), np.repeat([0, 1, 2], 20)
    z = EmbeddingProcessor(100).fit(x, y)(x)
    assert z.shape == (60, 2)
    assert np.allclose(np.linalg.norm(z, axis=1), np.sqrt(2))


def test_kaldi_lda_known_answer():
    """Two classes in 2-D: class means (-1, 0) and (3, 0), within-class deviations +-1 in x
    and +-2 in y, so W = diag(1, 4), B = diag(4, 0): the map is diag(1, 1/2) (up to signs)
    after centring on the global mean (1, 0), eigenvalues 4 and 0; both dimensions kept."""
    dev = np.array([[-1, -2], [-1, 2], [1, -2], [1, 2]], dtype=float)
    x = np.concatenate([dev + [-1, 0], dev + [3, 0]])
    y = np.repeat([0, 1], 4)
    lda = KaldiLda(2).fit(x, y)
    assert np.allclose(lda.eigenvalues, [4, 0])
    assert np.allclose(np.abs(lda.matrix), [[1, 0], [0, 0.5]])
    assert np.allclose(np.abs(lda.transform(x)), np.abs((x - [1, 0]) * [1, 0.5]))
    z = EmbeddingProcessor(100, "kaldi").fit(x, y)(x)  # 2 dims kept, more than languages - 1
    assert z.shape == (8, 2) and np.allclose(np.linalg.norm(z, axis=1), np.sqrt(2))


def _clustered(seed: int = 0, n_class: int = 4, dim: int = 10):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(n_class), [30, 40, 50, 60][:n_class])
    mix = rng.normal(size=(dim, dim))
    return rng.normal(0, 3, (n_class, dim))[y] + rng.normal(size=(len(y), dim)) @ mix, y


def test_kaldi_lda_is_the_generalized_eigenproblem():
    from scipy.linalg import eigh

    x, y = _clustered()
    lda = KaldiLda(6).fit(x, y)
    z = lda.transform(x)
    means = np.stack([z[y == k].mean(axis=0) for k in range(4)])
    counts = np.bincount(y)
    between = (means.T * counts) @ means / len(y)
    within = np.cov(z.T, bias=True) - between
    assert np.allclose(within, np.eye(6), atol=1e-9)  # whitened within-class
    assert np.allclose(between, np.diag(lda.eigenvalues), atol=1e-9)
    xc = x - x.mean(axis=0)
    xm = np.stack([xc[y == k].mean(axis=0) for k in range(4)])
    b = (xm.T * counts) @ xm / len(y)
    w = xc.T @ xc / len(y) - b
    top = eigh(b, w, eigvals_only=True)[::-1][:6]
    assert np.allclose(lda.eigenvalues, top) and np.allclose(top[3:], 0, atol=1e-9)


def test_kaldi_lda_matches_sklearn_within_languages_minus_one():
    """Up to a rotation (which LR and cosine ignore), the two LDAs agree at C - 1 dims."""
    x, y = _clustered()
    zk = EmbeddingProcessor(3, "kaldi").fit(x, y)(x)
    zs = EmbeddingProcessor(3, "sklearn").fit(x, y)(x)
    assert np.allclose(zk @ zk.T, zs @ zs.T, atol=1e-8)
    assert EmbeddingProcessor(8, "kaldi").fit(x, y)(x).shape == (180, 8)
    assert EmbeddingProcessor(50, "kaldi").fit(x, y)(x).shape == (180, 10)  # x-vector size
    with pytest.raises(ApmError, match="6 x-vectors of dimension 10 .* needs at least 10 .*13"):
        KaldiLda(2).fit(x[[0, 1, 30, 31, 70, 71]], y[[0, 1, 30, 31, 70, 71]])


def test_kaldi_lda_floors_a_singular_within_class_covariance(caplog):
    """As ivector-compute-lda: a rank-deficient within-class covariance (here a constant
    dimension; also fewer than dim + languages x-vectors) is floored, not an error."""
    x, y = _clustered()
    padded = np.hstack([x, np.zeros((len(x), 1))])
    with caplog.at_level("WARNING"):
        lda = KaldiLda(6).fit(padded, y)
    assert "floored 1 of 11 eigenvalues" in caplog.text
    reference = KaldiLda(6).fit(x, y)
    assert np.allclose(lda.eigenvalues, reference.eigenvalues)
    z, zr = lda.transform(padded)[:, :3], reference.transform(x)[:, :3]  # the discriminant dims
    assert np.isfinite(z).all() and np.allclose(z @ z.T, zr @ zr.T, atol=1e-8)
    caplog.clear()
    few = [*range(4), *range(30, 33), *range(70, 73), *range(120, 123)]  # 10 dims + 4 langs - 1
    with caplog.at_level("WARNING"):
        assert KaldiLda(3).fit(x[few], y[few]).transform(x).shape == (180, 3)
    assert (
        "floored 1 of 10 eigenvalues" in caplog.text
        and "full rank needs at least 14" in caplog.text
    )
    with pytest.raises(ApmError, match="no within-class variation"):
        KaldiLda(2).fit(np.repeat(np.eye(10), 2, axis=0), np.repeat(np.arange(10), 2))


def test_missing_test_xvectors_error_or_skip(tmp_path):
    system = make_system(tmp_path)
    scp = system / "xvectors" / "task_full" / "xvector.scp"
    lines = scp.read_text().splitlines(keepends=True)
    scp.write_text("".join(lines[2:]))
    conf = BackendConfig(backends=["lr"])
    with pytest.raises(ApmError, match=r"no x-vector for 2 of 30 utterances.*--skip-bad"):
        score_system(system, tmp_path / "data", "train", ["task_full"], conf)
    score_system(system, tmp_path / "data", "train", ["task_full"], conf, skip_bad=True)
    assert len(read_scores(system / "scores" / "task_full.score").utts) == 28


def test_skipped_utterances_warned_once_per_task(tmp_path, caplog):
    """Three back-ends, x-vectors and logits missing for the same utterances: one warning."""
    system = make_system(tmp_path)
    for name in ("xvector", "logits"):
        scp = system / "xvectors" / "task_full" / f"{name}.scp"
        scp.write_text("".join(scp.read_text().splitlines(keepends=True)[2:]))
    conf = BackendConfig(backends=["lr", "cosine", "classifier"])
    with caplog.at_level("WARNING", logger="apm.backend.scoring"):
        score_system(system, tmp_path / "data", "train", ["task_full"], conf, skip_bad=True)
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith("task_full: 2 of 30 trial utterances have no x-vector or logits")
    assert "lr 2, cosine 2, classifier 2" in warnings[0]


def test_task_language_unknown_to_system(tmp_path):
    system = make_system(tmp_path)
    write_trials(tmp_path / "data" / "task_full" / "trials", [Trial("ko-kr", "u", True)])
    with pytest.raises(ApmError, match=r"\['ko-kr'\] are not among the system's languages"):
        score_system(system, tmp_path / "data", "train", ["task_full"], BackendConfig())


def test_logits_size_mismatch(tmp_path):
    system = make_system(tmp_path)
    (system / "languages.txt").write_text("ja-jp\nru-ru\nzh-cn\nko-kr\n")
    conf = BackendConfig(primary="classifier", backends=["classifier"])
    with pytest.raises(ApmError, match="3 outputs per utterance but 4 languages"):
        score_system(system, tmp_path / "data", "train", ["task_full"], conf)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backends: [lr, plda]\n", "unknown back-end.*choose from lr, cosine, classifier"),
        ("primary: cosine\nbackends: [lr]\n", "primary 'cosine' must be one of"),
        ("lda_dim: many\n", "'lda_dim' is 'many'; it must be an integer"),
        ("lr_cc: 1\n", r"unknown keys \[.lr_cc.\]"),
    ],
)
def test_bad_config(tmp_path, text, message):
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(ApmError, match=message):
        load_backend_config(tmp_path / "b.yaml")


def test_recipe_conf_is_valid(repo_root):
    conf = load_backend_config(repo_root / "egs/olr/conf/backend.yaml")
    assert conf.primary == "lr" and set(conf.backends) == {"lr", "cosine", "classifier"}


def test_score_step_script(tmp_path, repo_root, shell_env):
    make_system(tmp_path)
    r = subprocess.run(
        [str(repo_root / "steps/score.sh"), "--config", str(repo_root / "egs/olr/conf/backend.yaml"),
         "--data", "data", "--train-set", "train", "exp/sys", "task_full", "task_open"],
        cwd=tmp_path, env=shell_env, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "exp/sys/scores/task_open.classifier.score").is_file()
    assert (tmp_path / "exp/sys/log/score.log").is_file()
    r = subprocess.run(
        [str(repo_root / "steps/score.sh"), "--config", str(repo_root / "egs/olr/conf/backend.yaml"),
         "exp/sys", "task_nope"],
        cwd=tmp_path, env=shell_env, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 1 and "ERROR" in r.stderr and "task_nope/trials" in r.stderr


def test_backend_train_set_option(tmp_path, repo_root, shell_env):
    """--backend-train-set trains LDA/LR on another set (the AP20 baseline: enrollment);
    the scores equal score_system's with that set as the training set."""
    system = make_system(tmp_path)
    r = subprocess.run(
        [str(repo_root / "steps/score.sh"), "--config", str(repo_root / "egs/olr/conf/backend.yaml"),
         "--train-set", "train", "--backend-train-set", "task_full", "exp/sys", "task_open"],
        cwd=tmp_path, env=shell_env, capture_output=True, text=True,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "back-end training data: 30 x-vectors" in r.stderr
    via_cli = (system / "scores" / "task_open.score").read_text()
    conf = load_backend_config(repo_root / "egs/olr/conf/backend.yaml")
    score_system(system, tmp_path / "data", "task_full", ["task_open"], conf)
    assert (system / "scores" / "task_open.score").read_text() == via_cli
    score_system(system, tmp_path / "data", "train", ["task_open"], conf)
    assert (system / "scores" / "task_open.score").read_text() != via_cli


def test_corrupt_ark_is_a_clear_error(tmp_path):
    system = make_system(tmp_path)
    ark = system / "xvectors" / "task_full" / "xvector.ark"
    ark.write_bytes(ark.read_bytes()[:50])
    with pytest.raises(ApmError, match=r"xvector.scp: cannot be read .*rerun the extraction"):
        score_system(system, tmp_path / "data", "train", ["task_full"], BackendConfig())


def test_logistic_backend_scores_two_languages():
    from apm.backend.models import LogisticBackend

    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-1, 1, (20, 3)), rng.normal(1, 1, (20, 3))])
    labels = np.array([0] * 20 + [1] * 20)
    scores = LogisticBackend(1.0, 100, "balanced").fit(x, labels)(x)
    assert scores.shape == (40, 2)
    assert np.allclose(np.exp(scores).sum(axis=1), 1.0)
    assert (scores.argmax(axis=1) == labels).mean() > 0.8


@pytest.mark.parametrize("impl", ["sklearn", "kaldi"])
@pytest.mark.parametrize("n_lang", [2, 3])
def test_saved_backend_scores_exactly_as_scikit_learn(tmp_path, impl, n_lang):
    """The arrays saved by stage 6 score bit for bit as the scikit-learn models they come
    from (LDA transform, predict_log_proba), once loaded back from disk."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
    from sklearn.linear_model import LogisticRegression

    from apm.backend.models import CosineBackend, LogisticBackend
    from apm.backend.store import FittedBackend, load_backend, save_backend

    rng = np.random.default_rng(n_lang)
    x = np.concatenate([rng.normal(k, 1.0, (30, 8)) for k in range(n_lang)])
    y = np.repeat(np.arange(n_lang), 30)
    test = rng.normal(0.5, 1.5, (17, 8))
    proc = EmbeddingProcessor(100, impl).fit(x, y)
    z = proc(x)
    models = {
        "lr": LogisticBackend(1.0, 1000, "balanced").fit(z, y),
        "cosine": CosineBackend().fit(z, y),
    }
    conf = BackendConfig(backends=["lr", "cosine"], lda_impl=impl)
    fb = FittedBackend(conf, LANGS[:n_lang], proc, models)
    save_backend(tmp_path / "b", fb)
    loaded = load_backend(tmp_path / "b", "rebuild it")
    for name in ("lr", "cosine"):
        np.testing.assert_array_equal(loaded.scores(name, test), fb.scores(name, test))
    ztest = proc(test)
    if impl == "sklearn":
        lda = LinearDiscriminantAnalysis(n_components=n_lang - 1, solver="svd").fit(x, y)
        projected = lda.transform(test) - (lda.transform(x)).mean(axis=0)
        norm = np.linalg.norm(projected, axis=1, keepdims=True)
        np.testing.assert_array_equal(ztest, projected * (np.sqrt(n_lang - 1) / norm))
    reference = LogisticRegression(C=1.0, max_iter=1000, class_weight="balanced").fit(z, y)
    np.testing.assert_array_equal(loaded.scores("lr", test), reference.predict_log_proba(ztest))


def test_calibration_leaves_the_raw_scores_alone(tmp_path):
    """Dev sets add scores/calibrated/ and a calibration to the saved back-end; the raw score
    files are the same bytes as without; a rerun without dev sets removes the calibrated
    files it would leave stale."""
    from apm.backend.scoring import load_system_backend

    system = make_system(tmp_path)
    conf = BackendConfig(primary="lr", backends=["lr", "cosine", "classifier"])
    tasks = ["task_full", "task_open"]
    score_system(system, tmp_path / "data", "train", tasks, conf)
    raw = {p.name: p.read_bytes() for p in (system / "scores").glob("*.score")}
    assert not load_system_backend(system).calibration
    score_system(system, tmp_path / "data", "train", tasks, conf, dev_sets=["task_full"])
    assert {p.name: p.read_bytes() for p in (system / "scores").glob("*.score")} == raw
    fb = load_system_backend(system)
    assert sorted(fb.calibration) == ["classifier", "cosine", "lr"]
    assert fb.info["dev_sets"] == ["task_full"] and fb.info["n_dev_utts"]["lr"] == 30
    calibrated = sorted(p.name for p in (system / "scores" / "calibrated").glob("*.score"))
    assert calibrated == sorted(raw)
    s = read_scores(system / "scores" / "calibrated" / "task_open.cosine.score")
    assert np.allclose(np.exp(s.matrix).sum(axis=1), 1.0, atol=1e-5)  # log-posteriors
    score_system(system, tmp_path / "data", "train", tasks, conf)
    assert not list((system / "scores" / "calibrated").glob("*.score"))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: (d / "backend.json").write_text("{not json"),
            r"backend.json: corrupt, not JSON",
        ),
        (lambda d: (d / "backend.json").unlink(), r"backend.json: not found"),
        (
            lambda d: (d / "backend.npz").write_bytes(b"PK\x03\x04junk"),
            r"backend.npz: does not match",
        ),
        (lambda d: (d / "backend.npz").unlink(), r"backend.npz: not found"),
    ],
)
def test_corrupt_saved_backend_is_a_clear_error(tmp_path, damage, message):
    from apm.backend.scoring import load_system_backend

    system = make_system(tmp_path)
    score_system(system, tmp_path / "data", "train", ["task_full"], BackendConfig())
    damage(system / "backend")
    with pytest.raises(ApmError, match=message + r".*rerun stage 6 \(steps/score.sh"):
        load_system_backend(system)


def test_backend_json_and_npz_must_agree(tmp_path):
    """A backend.json whose arrays are not in backend.npz (hand-edited, or from another
    version) names both files instead of a KeyError."""
    import json

    from apm.backend.scoring import load_system_backend

    system = make_system(tmp_path)
    score_system(system, tmp_path / "data", "train", ["task_full"], BackendConfig())
    meta = json.loads((system / "backend" / "backend.json").read_text())
    meta["backends"] = ["lr", "cosine"]
    (system / "backend" / "backend.json").write_text(json.dumps(meta))
    with pytest.raises(ApmError, match=r"backend.json: inconsistent with backend.npz.*'means'"):
        load_system_backend(system)

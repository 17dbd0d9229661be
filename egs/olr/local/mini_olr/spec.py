"""What mini-OLR contains: sizes, sets, speakers and the per-utterance plan.

Everything random is drawn from generators seeded by `(seed, purpose, names, index)`
(`stable_seed`), never from shared state, so the plan and every utterance are the same for
any number of jobs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from apm.utils.errors import ApmError
from mini_olr.languages import Language
from mini_olr.tasks import DEV_SETS, SETS

# eSpeak NG voice variants (espeak-ng-data/voices/!v) that sound like speech; robots,
# whisper, croak and novelty voices are left out. Split rule: in this sorted list, every third
# variant (positions 2, 5, 8, ...) is held out from training; of those, alternate ones belong
# to test speakers and to dev speakers only (positions 2, 8, 14, ... test; 5, 11, 17, ...
# dev). So no test or dev speaker shares a voice with training, nor a test one with dev.
VARIANTS: tuple[str, ...] = tuple(
    sorted(
        """Alex Alicia Andrea Andy Annie Denis Diogo Gene Henrique Hugo Jacky Lee Marco Mario
        Michael Mike Nguyen Reed adam anika antonio aunty belinda benjamin boris caleb david
        ed edward f1 f2 f3 f4 f5 grandma grandpa gustave ian iven john klatt klatt2 klatt3
        linda m1 m2 m3 m4 m5 m6 m7 m8 marcelo max michel miguel norbert pablo paul pedro
        quincy rob robert sandro shelby steph travis victor zac""".split()
    )
)
HELD_OUT_VARIANTS = VARIANTS[2::3]
TEST_VARIANTS = HELD_OUT_VARIANTS[0::2]
DEV_VARIANTS = HELD_OUT_VARIANTS[1::2]
TRAIN_VARIANTS = tuple(v for v in VARIANTS if v not in HELD_OUT_VARIANTS)

SHORT_SETS = ("dev_short", "task_short")
SHORT_SAMPLES = 16000  # task_short: exactly 1.00 s at 16 kHz


@dataclass(frozen=True)
class SetSpec:
    """Per set: duration range of the synthesized utterance (s) and its channel."""

    min_dur: float
    max_dur: float
    channel: str  # train | clean | cross | noisy


SET_SPECS = {
    "train": SetSpec(2.0, 9.0, "train"),
    "dev_full": SetSpec(3.0, 8.0, "clean"),
    "dev_short": SetSpec(2.0, 6.0, "clean"),  # cut to a 1 s segment afterwards
    "task_full": SetSpec(3.0, 8.0, "clean"),
    "task_short": SetSpec(2.0, 6.0, "clean"),  # cut to a 1 s segment afterwards
    "task_cross": SetSpec(3.0, 8.0, "cross"),
    "task_noisy": SetSpec(3.0, 8.0, "noisy"),
    "task_open": SetSpec(3.0, 8.0, "clean"),
}


@dataclass(frozen=True)
class Size:
    languages: tuple[str, ...]
    unknowns: tuple[str, ...]
    train_speakers: int  # per language
    utts_per_train_speaker: int
    test_speakers: int  # per language, shared by the test tasks
    test_utts: int  # per language and test task
    dev_speakers: int  # per language, shared by the dev sets
    dev_utts: int  # per language and dev set
    max_words: int  # vocabulary size per language


ALL_TARGETS = (
    "zh-cn",
    "ct-cn",
    "id-id",
    "ja-jp",
    "ko-kr",
    "ru-ru",
    "vi-vn",
    "Kazak",
    "Uyghu",
    "ms-my",
)
SIZES = {
    # tiny: seconds; a confusable pair (id/ms) plus two others, for tests.
    "tiny": Size(("id-id", "ms-my", "ru-ru", "zh-cn"), ("ky-kg", "tr-tr"), 2, 3, 2, 3, 2, 3, 300),
    # mini: ~50 min of training audio; 100 test utterances per language and task (1000 per
    # closed-set task: with 5 seeds a paired bootstrap resolved Cavg differences of
    # 0.008-0.03), 60 dev utterances per language and dev set.
    "mini": Size(ALL_TARGETS, ("ky-kg", "uz-uz", "tr-tr", "ta-in"), 10, 6, 10, 100, 6, 60, 1500),
    # full: 10x mini's training audio, for a GPU machine.
    "full": Size(
        ALL_TARGETS,
        ("ky-kg", "uz-uz", "tr-tr", "ta-in", "ne-np", "my-mm"),
        *(40, 15, 12, 240, 10, 120, 5000),
    ),
}


def get_size(name: str) -> Size:
    if name not in SIZES:
        raise ApmError(f"unknown corpus size '{name}'; available: {' '.join(SIZES)}")
    return SIZES[name]


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from `parts` that is the same on every machine and Python run."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@dataclass(frozen=True)
class Speaker:
    """A fixed eSpeak voice: variant x base pitch x pitch range x rate x vocal-tract warp."""

    id: str
    variant: str
    pitch: int  # eSpeak base pitch, 0-100
    pitch_range: int  # eSpeak pitch range, 0-100
    rate: int  # words per minute
    warp: float  # vocal-tract-length warp: all frequencies scaled by this factor


def make_speakers(seed: int, code: str, role: str, count: int) -> list[Speaker]:
    """`count` speakers of language `code`; `role` 'tr' draws from the training variants,
    'te' from the test variants, 'dv' from the dev variants (see VARIANTS)."""
    pool = {"tr": TRAIN_VARIANTS, "te": TEST_VARIANTS, "dv": DEV_VARIANTS}[role]
    speakers = []
    for k in range(count):
        rng = np.random.default_rng(stable_seed(seed, "speaker", code, role, k))
        speakers.append(
            Speaker(
                id=f"{code}_{role}{k:02d}",
                variant=pool[int(rng.integers(len(pool)))],
                pitch=int(rng.integers(25, 76)),
                pitch_range=int(rng.integers(20, 81)),
                rate=int(rng.integers(135, 206)),
                warp=round(float(rng.uniform(0.9, 1.1)), 3),
            )
        )
    return speakers


@dataclass(frozen=True)
class Utterance:
    """Everything needed to render one utterance, independent of any other."""

    utt: str
    set: str
    language: Language
    speaker: Speaker
    seed: int
    spec: SetSpec = field(repr=False)
    segment_samples: int | None = None  # task_short: cut a segment of this many samples


def plan_corpus(
    size: Size, languages: list[Language], unknowns: list[Language], seed: int
) -> list[Utterance]:
    """The ordered list of utterances of every set (speakers 'tr' train, 'dv' dev, 'te' test)."""
    plan: list[Utterance] = []
    for set_name in SETS:
        langs = languages + unknowns if set_name == "task_open" else languages
        for lang in langs:
            if set_name == "train":
                speakers = make_speakers(seed, lang.code, "tr", size.train_speakers)
                owners = [s for s in speakers for _ in range(size.utts_per_train_speaker)]
            else:
                dev = set_name in DEV_SETS
                role, n_spk, n_utt = (
                    ("dv", size.dev_speakers, size.dev_utts)
                    if dev
                    else ("te", size.test_speakers, size.test_utts)
                )
                speakers = make_speakers(seed, lang.code, role, n_spk)
                owners = [speakers[i % len(speakers)] for i in range(n_utt)]
            tag = set_name.removeprefix("task_")
            for i, spk in enumerate(owners):
                plan.append(
                    Utterance(
                        utt=f"{spk.id}_{tag}{i:04d}",
                        set=set_name,
                        language=lang,
                        speaker=spk,
                        seed=stable_seed(seed, set_name, lang.code, i),
                        spec=SET_SPECS[set_name],
                        segment_samples=SHORT_SAMPLES if set_name in SHORT_SETS else None,
                    )
                )
    return plan

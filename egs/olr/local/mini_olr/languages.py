"""Languages of mini-OLR: OLR code -> eSpeak voice -> text source.

Targets follow the OLR challenge sets (with the confusable pairs id/ms and kk/ug on purpose).
Unknown (open-set) languages come from outside that set. A code not in these tables can be
given as `code=voice` (e.g. `sw-ke=sw`); its text then comes from wordfreq or CLDR by voice.
"""

from __future__ import annotations

from dataclasses import dataclass

from apm.utils.errors import ApmError


@dataclass(frozen=True)
class Language:
    code: str  # OLR-style language label written to utt2lang
    voice: str  # eSpeak NG language voice
    text: str  # "wordfreq:<lang>" or "cldr:<locale>"
    kana_only: bool = False  # eSpeak ja pronounces kana only (kanji are spelled in English)


TARGETS: dict[str, Language] = {
    lang.code: lang
    for lang in (
        Language("zh-cn", "cmn", "wordfreq:zh"),
        Language("ct-cn", "yue", "cldr:yue"),
        Language("id-id", "id", "wordfreq:id"),
        Language("ja-jp", "ja", "wordfreq:ja", kana_only=True),
        Language("ko-kr", "ko", "wordfreq:ko"),
        Language("ru-ru", "ru", "wordfreq:ru"),
        Language("vi-vn", "vi", "wordfreq:vi"),
        Language("Kazak", "kk", "cldr:kk"),
        Language("Uyghu", "ug", "cldr:ug"),
        Language("ms-my", "ms", "wordfreq:ms"),
    )
}

UNKNOWNS: dict[str, Language] = {
    lang.code: lang
    for lang in (
        Language("ky-kg", "ky", "cldr:ky"),
        Language("uz-uz", "uz", "cldr:uz"),
        Language("tr-tr", "tr", "wordfreq:tr"),
        Language("my-mm", "my", "cldr:my"),
        Language("ne-np", "ne", "cldr:ne"),
        Language("ta-in", "ta", "wordfreq:ta"),
    )
}

# Languages whose speech becomes babble noise in task_noisy: neither target nor unknown, so
# the noise adds no cue for any class.
BABBLE: tuple[Language, ...] = (
    Language("de-de", "de", "wordfreq:de"),
    Language("es-es", "es", "wordfreq:es"),
    Language("hi-in", "hi", "wordfreq:hi"),
    Language("sw-ke", "sw", "cldr:sw"),
)


def resolve(codes: list[str], table: dict[str, Language], role: str) -> list[Language]:
    """Look `codes` up in `table`; `code=voice` defines a language not in the table.

    An unknown code or eSpeak voice raises an ApmError listing the available ones.
    """
    from mini_olr.espeak import available_voices
    from mini_olr.text import text_source_for_voice

    out = []
    for code in codes:
        if "=" in code:
            code, voice = code.split("=", 1)
            if voice not in available_voices():
                raise ApmError(
                    f"language {code}: eSpeak NG has no voice '{voice}'; voices: "
                    f"{' '.join(available_voices())}"
                )
            out.append(Language(code, voice, text_source_for_voice(voice)))
        elif code in table:
            out.append(table[code])
        else:
            raise ApmError(
                f"unknown {role} language '{code}'; available: {' '.join(table)} "
                "(or give CODE=VOICE with an eSpeak NG voice, e.g. sw-ke=sw)"
            )
    if len({lang.code for lang in out}) != len(out):
        raise ApmError(f"{role} languages repeat a code: {' '.join(codes)}")
    return out

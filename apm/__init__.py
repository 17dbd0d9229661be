"""Phoneme-aware language recognition: multi-task x-vectors with APM-Softmax.

Sub-packages follow the data's journey: corpus -> data -> features -> align -> nnet/losses
-> train -> extract -> backend -> metrics -> report. `apm.bin` holds one CLI per tool;
`apm.utils` the plumbing every stage shares (errors, logging, atomic files, frames).
"""

__version__ = "0.1.0"

__all__ = ["LanguageIdentifier"]


def __getattr__(name: str):
    # Lazy: `import apm` stays cheap; torch and the models load on first use.
    if name == "LanguageIdentifier":
        from apm.infer.identifier import LanguageIdentifier

        return LanguageIdentifier
    raise AttributeError(f"module 'apm' has no attribute {name!r}")

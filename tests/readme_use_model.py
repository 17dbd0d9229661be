# The Python snippet of README "Use a trained model", run as written (from egs/olr) by
# tests/test_identify.py: keep the two in sync.
from apm import LanguageIdentifier

lid = LanguageIdentifier.from_dir("exp/apm_am/model")
result = lid.identify("data/mini_olr/wav/task_full/id-id/id-id_te00_full0000.wav")
print(result.language, result.posterior)  # the best language (or unknown) and its posterior
print(result.posteriors)  # {language: posterior}, languages.txt order
print(result.embedding.shape)  # the x-vector
print(lid.embed("data/mini_olr/wav/task_short/id-id/id-id_te00_short0000.wav").shape)
print(result.top[0])  # the best-scored language and its posterior, whatever the threshold

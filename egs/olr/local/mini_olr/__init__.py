"""mini-OLR: an OLR-shaped language-recognition corpus synthesized offline with eSpeak NG.

The OLR recipe's own code (egs/olr/local/, on PYTHONPATH through egs/olr/path.sh): `build`
(make_mini_olr), `spec` (sizes, speakers, the per-utterance plan), `tasks` (the recipe's sets
and test conditions), `languages`, `text`, `espeak`, `synth`, `channel`; `python -m mini_olr`
is stage 0's command line. Importing the package itself loads nothing heavy.
"""

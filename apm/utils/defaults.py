"""Option defaults shared by the Python tools and the shell layers above them, declared once.

The shell scripts (egs/*/run.sh, steps/*.sh, egs/olr/local/make_mini_olr.sh) leave such an
option empty by default and then do not pass it, so the tool's default below applies.
"""

NJ = 2  # parallel jobs of the CPU stages (corpus synthesis, manifests, fbank, alignment)

"""The one exception type a user sees as a message instead of a traceback."""


class ApmError(Exception):
    """A problem with the user's input or setup.

    The message must name the offending file or utterance and say what to do; CLIs built with
    `apm.bin.cli.main` print it as `ERROR: <message>` and exit 1 without a traceback.
    """

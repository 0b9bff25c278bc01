"""The one exception type that reaches the user as a one-line message instead of a traceback."""


class UsageError(Exception):
    """Bad input from the user: a file, a line, a key or a flag, and how to fix it.

    The CLI prints ``error: <message>`` and exits with status 2. The message names the place
    (``data.jsonl:12``, ``recipes/demo.yaml: key 'lr'``, ``--task``) and the fix.
    """

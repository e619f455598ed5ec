"""The one exception type for problems the user can fix (bad config, missing data, bad files).

Entry points catch it and print its message as a single line instead of a traceback.
"""


class DeblurError(Exception):
    """A user-facing error: the message names the file or config key and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM outside training's own handler (start-up, data preparation, the final evaluation): unwinds like
    Ctrl-C, so that temporary folders go and a fresh run's empty folder is removed, and exits with 143."""

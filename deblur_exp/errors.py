"""The one exception type for problems the user can fix (bad config, missing data, bad files).

Entry points catch it and print its message as a single line instead of a traceback.
"""


class DeblurError(Exception):
    """A user-facing error: the message names the file or config key and what to do."""

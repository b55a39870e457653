"""The one exception type prunex raises for problems a user can fix."""


class PrunexError(ValueError):
    """Bad input or state, with a message that says what to do about it."""

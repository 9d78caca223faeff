"""The one exception type of the data package."""

from upanets_keras.errors import UPANetsError


class DataError(UPANetsError, ValueError):
    """A user-facing data problem; str() is one line saying what was wrong and what to do."""

    def __init__(self, message):
        super().__init__(" ".join(str(message).split()))

"""The one exception the store raises."""

from evosearch.errors import RunFailure


class StoreError(RunFailure, RuntimeError):
    """A store operation that failed; the message is one line and never holds a database password."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))

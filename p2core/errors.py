"""Errors that the command line reports as one line (``p2core: error: ...``) instead of a traceback."""


class P2Error(Exception):
    """A problem with the user's input (config, dataset, checkpoint) that the message explains how to fix."""


class CheckpointError(P2Error):
    """A checkpoint file that is truncated, foreign, or does not match the requested model."""


class DataError(P2Error):
    """A dataset that is missing, empty, unreadable or too small."""


class TrainingDiverged(P2Error):
    """The training loss became NaN or infinite."""


class DiskFull(P2Error):
    """The file system ran out of space (or quota) while writing a result; the previous file is intact."""


class Locked(P2Error):
    """Another live process holds the lock on a run folder or sample shard."""

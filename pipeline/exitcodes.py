"""Exit codes of the BIDS-Apps execution specification (draft), as fMRIPrep and MRIQC use them."""

from enum import IntEnum


class ExitCode(IntEnum):
    SUCCESS = 0
    FAILURE = 1  # the processing itself failed (a node crashed)
    INVALID_BIDS = 16  # bids_dir is not a usable BIDS dataset, or an input image is unusable
    UNKNOWN_LEVEL = 17  # analysis_level is neither participant nor group
    NO_MATCH = 18  # the participant/session/filter selection matched no T1w image
    USAGE = 64  # command-line usage error (EX_USAGE)
    NO_INPUT = 66  # bids_dir missing or holding no T1w image at all (EX_NOINPUT)
    CANT_CREATE = 73  # output or work directory cannot be created or written (EX_CANTCREAT)


class UserError(Exception):
    """A mistake of the user: reported as one line on stderr with its exit code, no traceback."""

    def __init__(self, message: str, code: ExitCode):
        super().__init__(message)
        self.code = code

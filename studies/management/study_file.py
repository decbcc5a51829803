"""What the study-file commands share."""
from django.core.management.base import CommandError

from studies.spec import StudyFile, StudyFileInvalid, study_file_read


def study_file_or_error(path: str, *, consequence: str = "") -> StudyFile:
    """Read a study folder, or stop the command with every error, one per line."""
    try:
        return study_file_read(path)
    except StudyFileInvalid as invalid:
        raise CommandError(f"{len(invalid.errors)} error(s){consequence}:\n{invalid}") from None

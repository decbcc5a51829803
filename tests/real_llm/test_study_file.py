"""The real-model suite's study file stays valid (checked in every run: it needs no server)."""
from django.core.management import call_command

from real_llm_support import real_study_folder  # noqa: F401 (fixtures; a second conftest.py would shadow tests/conftest.py)


def test_the_real_model_study_file_passes_study_validate(real_study_folder, capsys):
    call_command("study_validate", str(real_study_folder))
    assert "loan-approval: valid" in capsys.readouterr().out

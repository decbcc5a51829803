"""Input of the researcher pages: one form per operation; the services check the rest."""
from django import forms
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth.forms import AuthenticationForm

from console.models import ApiToken
from participants.models import STEP_ORDER, Participant
from studies.models import Membership

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
EXPORT_FORMATS = [("csv", "CSV"), ("parquet", "Parquet"), ("jsonl", "JSON lines")]


class StudyUploadForm(forms.Form):
    file = forms.FileField(
        label="Study file", help_text="a study.yaml, or a .zip of the study folder (study.yaml with its material)"
    )

    def clean_file(self):
        upload = self.cleaned_data["file"]
        if upload.size > MAX_UPLOAD_BYTES:
            raise forms.ValidationError(f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.")
        name = upload.name.lower()
        if not name.endswith((".zip", ".yaml", ".yml")):
            raise forms.ValidationError("Upload a study.yaml or a .zip of the study folder.")
        return upload


class ArmIdsField(forms.MultipleChoiceField):
    """A list of arm ids; which arms the version has is the launch check's to say (it names an unknown one)."""

    def valid_value(self, value) -> bool:
        return bool(value) and len(value) <= 64


class StateForm(forms.Form):
    """Launch a draft version, or pause, resume or close the open one."""

    ACTIONS = {"launch": None, "pause": "paused", "resume": "live", "close": "closed"}
    action = forms.ChoiceField(choices=[(a, a) for a in ACTIONS])
    number = forms.IntegerField(min_value=1, required=False)
    allow = ArmIdsField(required=False)  # launch although these arms cannot run here (a recorded waiver)

    def clean(self):
        data = super().clean()
        if data.get("action") == "launch" and not data.get("number"):
            raise forms.ValidationError("Say which version to launch.")
        return data


class MemberForm(forms.Form):
    username = forms.CharField(max_length=150)
    role = forms.ChoiceField(choices=Membership.Role.choices)


class MemberRemoveForm(forms.Form):
    username = forms.CharField(max_length=150)


class DiffForm(forms.Form):
    a = forms.IntegerField(min_value=1, label="from version")
    b = forms.IntegerField(min_value=1, label="to version")


PARTICIPANT_GROUPS = [("", "anyone"), ("real", "real participants"), ("bot", "bots"), ("pilot", "pilots")]


class ParticipantFilterForm(forms.Form):
    """The participant list's filters; an empty choice means 'any'."""

    arm = forms.ChoiceField(required=False)
    step = forms.ChoiceField(required=False, choices=[("", "any step"), *[(s, s) for s in STEP_ORDER]])
    status = forms.ChoiceField(required=False, choices=[("", "any status"), *Participant.Status.choices])
    group = forms.ChoiceField(required=False, choices=PARTICIPANT_GROUPS, label="Who")

    def __init__(self, *args, arms: list[str], **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["arm"].choices = [("", "any arm"), *[(a, a) for a in arms]]

    def filters(self) -> dict:
        """Return the chosen filters as keyword arguments (None for 'any'); call after is_valid()."""
        data = self.cleaned_data if self.is_bound and self.is_valid() else {}
        return {name: data.get(name) or None for name in ("arm", "step", "status", "group")}


class ParticipantFindForm(forms.Form):
    """A recruiter's participant id to look up. Posted, never in a URL; shown back to nobody."""

    pid = forms.CharField(
        max_length=200, strip=True, label="Prolific ID",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false", "autocapitalize": "off"}),
    )


class ApiTokenForm(forms.Form):
    name = forms.CharField(max_length=100, strip=True, help_text="what the token is for, e.g. “nightly export”")
    scope = forms.ChoiceField(choices=ApiToken.Scope.choices, initial=ApiToken.Scope.READ,
                              help_text="read: GET only; write: may also change studies")


class ApiTokenRevokeForm(forms.Form):
    token = forms.IntegerField(min_value=1, max_value=2**63 - 1)


class JobForm(forms.Form):
    kind = forms.ChoiceField(choices=[("export", "export"), ("report", "report")])
    fmt = forms.ChoiceField(choices=EXPORT_FORMATS, required=False, label="format")


class _ThrottledLogin:
    """Say why a locked login was refused (console.logins leaves the refusal on the request)."""

    def get_invalid_login_error(self):
        refusal = getattr(self.request, "login_refusal", None)
        if refusal is not None:
            return forms.ValidationError(refusal.message, code="login_locked")
        return super().get_invalid_login_error()


class LoginForm(_ThrottledLogin, AuthenticationForm):
    """The console's login form."""


class AdminLoginForm(_ThrottledLogin, AdminAuthenticationForm):
    """The admin's login form: the same limits (they are in the authentication backend), the same message."""


class MemberUnlockForm(forms.Form):
    username = forms.CharField(max_length=150)

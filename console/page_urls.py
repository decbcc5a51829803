"""The researcher pages under /console/ (namespace "console"). Every study page has a <slug:slug> kwarg and
declares what it needs (console.access.researcher_view); docs/console.md lists who sees what."""
from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from . import screening_views, views
from .access import public_view
from .forms import LoginForm

app_name = "console"


def _account(view):
    """Mark a Django auth view for the access-matrix test: it takes no study."""
    view.needs = "account"
    return view


urlpatterns = [
    path("login/", public_view(auth_views.LoginView.as_view(  # throttled: console.logins
        template_name="console/login.html", authentication_form=LoginForm, redirect_authenticated_user=True,
    )), name="login"),
    path("logout/", public_view(auth_views.LogoutView.as_view()), name="logout"),  # POST only (Django 5)
    path("password/", _account(views.PasswordChangeView.as_view(  # revokes the API tokens
        success_url=reverse_lazy("console:password_change_done"),
    )), name="password_change"),
    path("password/done/", _account(auth_views.PasswordChangeDoneView.as_view(
        template_name="console/password_change_done.html")), name="password_change_done"),
    # Under "account/", not beside the study pages: a study may be called "tokens", and no study page is
    # <slug>/tokens/, so these never shadow one (a study called "account" keeps its own pages).
    path("account/tokens/", views.api_tokens, name="api_tokens"),
    path("account/tokens/revoke/", views.api_token_revoke, name="api_token_revoke"),
    path("", views.study_list, name="study_list"),
    path("upload/", views.study_upload, name="study_upload"),
    path("<slug:slug>/", views.study_detail, name="study"),
    path("<slug:slug>/upload/", views.study_version_upload, name="study_version_upload"),
    path("<slug:slug>/diff/", views.version_diff, name="version_diff"),
    path("<slug:slug>/state/", views.study_state, name="study_state"),
    path("<slug:slug>/llm-check/", views.llm_check, name="llm_check"),
    path("<slug:slug>/members/", views.member_set, name="member_set"),
    path("<slug:slug>/members/remove/", views.member_remove, name="member_remove"),
    path("<slug:slug>/members/unlock/", views.member_unlock, name="member_unlock"),
    path("<slug:slug>/bots/", views.bots_start, name="bots_start"),
    path("<slug:slug>/bots/<str:run>/", views.bots_status, name="bots_status"),
    path("<slug:slug>/monitor/", views.monitor, name="monitor"),
    path("<slug:slug>/monitor/live/", views.monitor_live, name="monitor_live"),
    path("<slug:slug>/participants/", views.participant_list, name="participants"),
    path("<slug:slug>/participants/find/", views.participant_find, name="participant_find"),  # before <pseudonym>
    path("<slug:slug>/participants/<str:pseudonym>/", views.transcript, name="transcript"),
    path("<slug:slug>/participants/<str:pseudonym>/erase/", views.participant_erase, name="participant_erase"),
    path("<slug:slug>/yoked/", screening_views.screenings, name="screenings"),
    path("<slug:slug>/yoked/decide/", screening_views.screening_decide, name="screening_decide"),
    path("<slug:slug>/exports/", views.jobs, name="jobs"),
    path("<slug:slug>/exports/start/", views.job_start, name="job_start"),
    path("<slug:slug>/exports/<int:job_id>/", views.job_status, name="job_status"),
    path("<slug:slug>/exports/<int:job_id>/download/", views.job_download, name="job_download"),
]

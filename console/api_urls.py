"""The REST API under /api/ (docs/api.md). Every view declares `needs` (console.access)."""
from django.urls import path
from drf_spectacular.views import SpectacularAPIView

from . import api
from .access import public_view

app_name = "api"

study = "studies/<slug:slug>/"

urlpatterns = [
    path("schema/", public_view(SpectacularAPIView.as_view()), name="schema"),
    path("docs/", api.api_docs, name="docs"),
    path("studies/", api.StudyListView.as_view(), name="studies"),
    path(study, api.StudyDetailView.as_view(), name="study"),
    path(study + "launch/", api.StudyLaunchView.as_view(), name="study-launch"),
    path(study + "pause/", api.StudyPauseView.as_view(), name="study-pause"),
    path(study + "resume/", api.StudyResumeView.as_view(), name="study-resume"),
    path(study + "close/", api.StudyCloseView.as_view(), name="study-close"),
    path(study + "versions/", api.VersionListView.as_view(), name="versions"),
    path(study + "versions/diff/", api.VersionDiffView.as_view(), name="versions-diff"),
    path(study + "arms/", api.ArmListView.as_view(), name="arms"),
    path(study + "participants/", api.ParticipantListView.as_view(), name="participants"),
    path(study + "participants/<str:pseudonym>/transcript/", api.TranscriptView.as_view(), name="transcript"),
    path(study + "participants/<str:pseudonym>/erase/", api.ParticipantEraseView.as_view(), name="participant-erase"),
    path(study + "exports/", api.ExportListView.as_view(), name="exports"),
    path(study + "exports/<int:job_id>/", api.ExportView.as_view(), name="export"),
    path(study + "exports/<int:job_id>/download/", api.ExportDownloadView.as_view(), name="export-download"),
    path(study + "report/", api.ReportListView.as_view(), name="reports"),
    path(study + "report/<int:job_id>/", api.ReportView.as_view(), name="report"),
    path(study + "report/<int:job_id>/download/", api.ReportDownloadView.as_view(), name="report-download"),
    path(study + "members/", api.MemberListView.as_view(), name="members"),
    path(study + "members/<str:username>/", api.MemberView.as_view(), name="member"),
    path("tokens/", api.TokenListView.as_view(), name="tokens"),
    path("tokens/<int:token_id>/", api.TokenView.as_view(), name="token"),
]

"""The REST API (docs/api.md). Thin views: an input serializer, one service or selector call, an output serializer.

Every view declares `needs` (console.access): StudyAccess resolves `self.study` through the one
gatekeeper before the handler runs, so a handler never looks a study up itself.
"""
from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import render
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions, status
from rest_framework.generics import GenericAPIView
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView
from rest_framework.views import exception_handler as drf_exception_handler

from analysis import selectors as analysis_selectors
from explainers.launch import LaunchRefused, study_launch_checked
from participants import services as participant_services
from studies import selectors as study_selectors
from studies import services as study_services
from studies.spec import StudyFileInvalid

from . import schema, selectors, serializers, services  # noqa: F401 - schema registers the bearer-token scheme
from .access import ACCOUNT, StudyAccess, public_view
from .authentication import ForeignOriginRefused
from .models import ApiToken, Job
from .throttling import AnonIPThrottle, SessionUserThrottle, TokenThrottle

ERROR = serializers.ErrorOut


# --- errors -------------------------------------------------------------------------------------


class Conflict(exceptions.APIException):
    status_code = status.HTTP_409_CONFLICT
    default_detail = "the study is not in a state that allows this"
    default_code = "conflict"


class StudyFileErrors(exceptions.APIException):
    """An invalid study file: 400 with every mistake, each with its path, file and line."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "invalid_study_file"

    def __init__(self, invalid: StudyFileInvalid):
        super().__init__(f"the study file has {len(invalid.errors)} error(s)")
        self.errors = [{"path": e.path, "message": e.message, "file": e.file, "line": e.line} for e in invalid.errors]


class ArmsCannotRun(exceptions.APIException):
    """A launch refused because an arm cannot run here: 400 naming each arm and its reasons."""

    status_code = status.HTTP_400_BAD_REQUEST
    default_code = "arm_cannot_run"

    def __init__(self, refused: LaunchRefused):
        super().__init__(str(refused).replace("--allow ARM", "`allow`"))
        self.arms = refused.problems


def exception_handler(exc, context):
    """DRF's handler, with one error shape for every status: {"detail", "code", and "fields" or "errors"}."""
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    if isinstance(exc, exceptions.ValidationError):
        fields = exc.detail if isinstance(exc.detail, dict) else {"non_field_errors": exc.detail}
        messages = {k: [str(m) for m in (v if isinstance(v, list) else [v])] for k, v in fields.items()}
        response.data = {"detail": "the request is not valid", "code": "invalid", "fields": messages}
    elif isinstance(exc, exceptions.APIException):
        codes = exc.get_codes()
        response.data = {"detail": str(exc.detail), "code": codes if isinstance(codes, str) else exc.default_code}
        if isinstance(exc, StudyFileErrors):
            response.data["errors"] = exc.errors
        if isinstance(exc, ArmsCannotRun):
            response.data["arms"] = exc.arms
    elif isinstance(exc, Http404):
        response.data = {"detail": str(exc) or "not found", "code": "not_found"}
    elif isinstance(exc, DjangoPermissionDenied):
        response.data = {"detail": str(exc) or "permission denied", "code": "permission_denied"}
    return response


# --- the base view ------------------------------------------------------------------------------


# Authentication, permissions and throttles shared by every API view; subclasses set `needs`. (A comment,
# not a docstring: drf-spectacular would print a docstring as every operation's description.)
class ApiView(APIView):
    needs: str = ""
    permission_classes = [ForeignOriginRefused, StudyAccess]
    throttle_classes = [TokenThrottle, SessionUserThrottle, AnonIPThrottle]
    renderer_classes = [JSONRenderer]
    study = None  # set by StudyAccess

    # DRF checks throttles after permissions, so a request without valid credentials would never be
    # counted: check them first, and count a wrong key against its IP before answering 401.
    def perform_authentication(self, request):
        try:
            request.user  # noqa: B018 - authenticates
        except exceptions.AuthenticationFailed:
            self.check_throttles(request)
            raise

    def check_permissions(self, request):
        self.check_throttles(request)
        super().check_permissions(request)

    def check_throttles(self, request):
        if getattr(request, "_throttles_checked", False):
            return
        request._throttles_checked = True
        super().check_throttles(request)


# A view whose success is a file: errors are JSON whatever the client accepts (never 406).
class FileDownloadView(ApiView):
    def perform_content_negotiation(self, request, force=False):
        return JSONRenderer(), JSONRenderer.media_type


def _file_response(job: Job) -> HttpResponse:
    response = HttpResponse(bytes(job.content), content_type=job.content_type)
    response["Content-Disposition"] = f'attachment; filename="{job.filename}"'
    response["Content-Length"] = str(job.size)
    response["Cache-Control"] = "no-store"
    if job.kind == Job.Kind.REPORT:
        from analysis.report import REPORT_CSP

        response["Content-Security-Policy"] = REPORT_CSP  # the report's inline CSS and SVG, and nothing else
    return response


# --- studies ------------------------------------------------------------------------------------


class StudyListView(ApiView):
    needs = ACCOUNT

    @extend_schema(operation_id="studies_list", responses=serializers.StudyListOut(many=True),
                   summary="Your studies, with your role and each study's state")
    def get(self, request):
        studies = analysis_selectors.study_list(user=request.user)
        return Response(serializers.StudyListOut(studies, many=True).data)

    @extend_schema(
        operation_id="studies_upload",
        request={"multipart/form-data": serializers.StudyUploadIn},
        responses={201: serializers.StudyUploadOut, 200: serializers.StudyUploadOut, 400: ERROR},
        summary="Upload a study file (study.yaml or a .zip of the folder) as a new draft version",
        description="A new slug makes you its owner; an existing one needs the editor or owner role. "
                    "An invalid file answers 400 with `errors`: every mistake with its path, file and line. "
                    "An identical file answers 200 with the existing version.",
    )
    def post(self, request):
        data = _valid(serializers.StudyUploadIn, request.data)
        upload = data["file"]
        try:
            version, created = study_services.study_file_upload(
                user=request.user, filename=upload.name, content=upload.read()
            )
        except StudyFileInvalid as invalid:
            raise StudyFileErrors(invalid) from None
        out = {"study": version.study.slug, "created": created, "version": version}
        return Response(serializers.StudyUploadOut(out).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class StudyDetailView(ApiView):
    needs = "monitor"

    @extend_schema(operation_id="studies_retrieve", responses=serializers.StudyDetailOut,
                   summary="One study: your role, its current version, counts")
    def get(self, request, slug):
        overview = analysis_selectors.study_overview(study=self.study)
        out = {"slug": self.study.slug, "title": self.study.title, "role": self.study.role,
               "created_at": self.study.created_at, **overview}
        return Response(serializers.StudyDetailOut(out).data)


class StudyLaunchView(ApiView):
    needs = "edit"

    @extend_schema(
        operation_id="studies_launch", request=serializers.StudyLaunchIn,
        responses={200: serializers.VersionOut, 400: ERROR, 409: ERROR},
        summary="Freeze a draft version and make it live (the open one closes)",
        description="Launching the version that is already live changes nothing. A draft whose target "
                    "cannot be trained answers 400 with `errors`; a version that is not a draft answers 409. "
                    "A draft with an arm that cannot run here (no endpoint, no price for a billed model, a "
                    "capability the endpoint probe found missing) answers 400 with code `arm_cannot_run`, "
                    "naming each arm and reason in `arms`, unless `allow` names the arm: it is then "
                    "launched and the waiver recorded.",
    )
    def post(self, request, slug):
        data = _valid(serializers.StudyLaunchIn, request.data)
        try:
            version = study_launch_checked(slug=self.study.slug, number=data.get("number"), actor=request.user,
                                           allow=data.get("allow") or [])
        except LaunchRefused as refused:
            raise ArmsCannotRun(refused) from None
        except study_services.StudyStateError as error:
            raise Conflict(str(error)) from None
        except StudyFileInvalid as invalid:
            raise StudyFileErrors(invalid) from None
        return Response(serializers.VersionOut(version).data)


class _StudyStateView(ApiView):
    needs = "edit"
    to_state = ""

    def post(self, request, slug):
        try:
            version = study_services.study_state_set(slug=self.study.slug, state=self.to_state, actor=request.user)
        except study_services.StudyStateError as error:
            raise Conflict(str(error)) from None
        return Response(serializers.VersionOut(version).data)


class StudyPauseView(_StudyStateView):
    to_state = "paused"

    @extend_schema(operation_id="studies_pause", request=None, responses={200: serializers.VersionOut, 409: ERROR},
                   summary="Pause the live version: new entries see the closed page; people inside finish")
    def post(self, request, slug):
        return super().post(request, slug)


class StudyResumeView(_StudyStateView):
    to_state = "live"

    @extend_schema(operation_id="studies_resume", request=None, responses={200: serializers.VersionOut, 409: ERROR},
                   summary="Resume the paused version")
    def post(self, request, slug):
        return super().post(request, slug)


class StudyCloseView(_StudyStateView):
    to_state = "closed"

    @extend_schema(operation_id="studies_close", request=None, responses={200: serializers.VersionOut, 409: ERROR},
                   summary="Close the open version for good; people inside finish")
    def post(self, request, slug):
        return super().post(request, slug)


class VersionListView(ApiView):
    needs = "monitor"

    @extend_schema(operation_id="versions_list", responses=serializers.VersionOut(many=True),
                   summary="The study's versions, oldest first")
    def get(self, request, slug):
        versions = study_selectors.study_versions(study=self.study)
        return Response(serializers.VersionOut(versions, many=True).data)


class VersionDiffView(ApiView):
    needs = "monitor"

    @extend_schema(operation_id="versions_diff", parameters=[serializers.VersionDiffIn],
                   responses={200: serializers.VersionDiffOut, 400: ERROR, 404: ERROR},
                   summary="A unified diff between the study files of two versions")
    def get(self, request, slug):
        data = _valid(serializers.VersionDiffIn, request.query_params)
        diff = study_selectors.study_version_diff(study=self.study, a=data["a"], b=data["b"])
        return Response(serializers.VersionDiffOut({"a": data["a"], "b": data["b"], "diff": diff}).data)


# --- arms and participants ----------------------------------------------------------------------


class ArmListView(ApiView):
    needs = "monitor"

    @extend_schema(operation_id="arms_list", responses=serializers.ArmOut(many=True),
                   summary="The current version's arms: weight, kind, allocation counts, budget state")
    def get(self, request, slug):
        return Response(serializers.ArmOut(analysis_selectors.arm_counts(study=self.study), many=True).data)


class ParticipantCursor(CursorPagination):
    ordering = "id"  # unique and never changes: pages stay stable while participants arrive
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


class ParticipantListView(ApiView, GenericAPIView):
    needs = "data"
    pagination_class = ParticipantCursor
    serializer_class = serializers.ParticipantOut

    @extend_schema(operation_id="participants_list", parameters=[serializers.ParticipantListIn],
                   responses=serializers.ParticipantOut(many=True),
                   summary="The study's participants, in order of arrival; filter by arm, step, status")
    def get(self, request, slug):
        data = _valid(serializers.ParticipantListIn, request.query_params)
        participants = analysis_selectors.participants_for_study(
            study=self.study, arm=data.get("arm"), step=data.get("step"), status=data.get("status"),
            is_simulated=data.get("simulated"), is_pilot=data.get("pilot"),
        )
        page = self.paginate_queryset(participants)
        integrity = analysis_selectors.participant_integrity(participant_ids=[p.pk for p in page])
        for participant in page:
            participant.integrity = integrity.get(participant.pk)
        return self.get_paginated_response(serializers.ParticipantOut(page, many=True).data)


class TranscriptView(ApiView):
    needs = "data"

    @extend_schema(operation_id="participants_transcript", responses={200: serializers.TranscriptOut, 404: ERROR},
                   summary="A participant's conversation with its LLM calls and learner-model timeline")
    def get(self, request, slug, pseudonym):
        transcript = analysis_selectors.participant_transcript(study=self.study, pseudonym=pseudonym)
        return Response(serializers.TranscriptOut(transcript).data)


class ParticipantEraseView(ApiView):
    # Erasure destroys research data for good: only an owner decides it (docs/roles.md, docs/api.md).
    needs = "members"

    @extend_schema(operation_id="participants_erase", request=None,
                   responses={200: serializers.ErasedOut, 404: ERROR},
                   summary="Erase one participant's data for good (owner only; audited without identifiers)")
    def post(self, request, slug, pseudonym):
        summary = participant_services.participant_erase(actor=request.user, study=self.study, pseudonym=pseudonym)
        return Response(serializers.ErasedOut(summary).data)


# --- exports and reports ------------------------------------------------------------------------


class ExportListView(ApiView):
    needs = "data"

    @extend_schema(operation_id="exports_list", responses=serializers.JobOut(many=True),
                   summary="The study's latest export jobs, newest first")
    def get(self, request, slug):
        jobs = selectors.jobs_for_study(study=self.study, kind=Job.Kind.EXPORT)
        return Response(serializers.JobOut(jobs, many=True).data)

    @extend_schema(operation_id="exports_start", request=serializers.ExportStartIn,
                   responses={202: serializers.JobOut, 400: ERROR},
                   summary="Start an export (a Celery job); poll it, then download the zip")
    def post(self, request, slug):
        data = _valid(serializers.ExportStartIn, request.data)
        job = services.export_job_start(user=request.user, study=self.study, fmt=data["format"],
                                        tables=data.get("tables"), include_simulated=data["include_simulated"],
                                        include_pilot=data["include_pilot"])
        return Response(serializers.JobOut(job).data, status=status.HTTP_202_ACCEPTED)


class ReportListView(ApiView):
    needs = "data"

    @extend_schema(operation_id="reports_list", responses=serializers.JobOut(many=True),
                   summary="The study's latest report jobs, newest first")
    def get(self, request, slug):
        jobs = selectors.jobs_for_study(study=self.study, kind=Job.Kind.REPORT)
        return Response(serializers.JobOut(jobs, many=True).data)

    @extend_schema(operation_id="reports_start", request=serializers.ReportStartIn,
                   responses={202: serializers.JobOut, 400: ERROR},
                   summary="Start the study report (a Celery job); poll it, then download the HTML")
    def post(self, request, slug):
        data = _valid(serializers.ReportStartIn, request.data)
        job = services.report_job_start(user=request.user, study=self.study,
                                        include_simulated=data["include_simulated"],
                                        include_pilot=data["include_pilot"])
        return Response(serializers.JobOut(job).data, status=status.HTTP_202_ACCEPTED)


class _JobView(ApiView):
    needs = "data"
    kind = ""

    def get(self, request, slug, job_id):
        job = selectors.job_get(study=self.study, kind=self.kind, job_id=job_id)
        return Response(serializers.JobOut(job).data)


class _JobDownloadView(FileDownloadView):
    needs = "data"
    kind = ""

    def get(self, request, slug, job_id):
        job = selectors.job_get(study=self.study, kind=self.kind, job_id=job_id, with_content=True)
        if job.state != Job.State.DONE:
            raise Conflict(f"the job is {serializers.JobOut().get_state(job)}; download it when it is done",
                           code="not_ready")
        return _file_response(job)


class ExportView(_JobView):
    kind = Job.Kind.EXPORT

    @extend_schema(operation_id="exports_retrieve", responses={200: serializers.JobOut, 404: ERROR},
                   summary="An export job: state and progress (0-100)")
    def get(self, request, slug, job_id):
        return super().get(request, slug, job_id)


class ExportDownloadView(_JobDownloadView):
    kind = Job.Kind.EXPORT

    @extend_schema(
        operation_id="exports_download",
        responses={(200, "application/zip"): OpenApiResponse(OpenApiTypes.BINARY, description="the export zip"),
                   409: ERROR, 404: ERROR},
        summary="Download a finished export (409 until it is done)",
    )
    def get(self, request, slug, job_id):
        return super().get(request, slug, job_id)


class ReportView(_JobView):
    kind = Job.Kind.REPORT

    @extend_schema(operation_id="reports_retrieve", responses={200: serializers.JobOut, 404: ERROR},
                   summary="A report job: state and progress (0-100)")
    def get(self, request, slug, job_id):
        return super().get(request, slug, job_id)


class ReportDownloadView(_JobDownloadView):
    kind = Job.Kind.REPORT

    @extend_schema(
        operation_id="reports_download",
        responses={(200, "text/html"): OpenApiResponse(OpenApiTypes.BINARY, description="the report, one HTML file"),
                   409: ERROR, 404: ERROR},
        summary="Download a finished report (409 until it is done)",
    )
    def get(self, request, slug, job_id):
        return super().get(request, slug, job_id)


# --- members ------------------------------------------------------------------------------------


class MemberListView(ApiView):
    needs = "members"

    @extend_schema(operation_id="members_list", responses=serializers.MemberOut(many=True),
                   summary="The study's members and their roles (owner only)")
    def get(self, request, slug):
        return Response(serializers.MemberOut(analysis_selectors.study_members(study=self.study), many=True).data)

    @extend_schema(operation_id="members_set", request=serializers.MemberSetIn,
                   responses={200: serializers.MemberOut, 400: ERROR},
                   summary="Add a researcher to the study or change their role (owner only)")
    def post(self, request, slug):
        data = _valid(serializers.MemberSetIn, request.data)
        try:
            membership = study_services.membership_set(actor=request.user, study=self.study,
                                                       username=data["username"], role=data["role"])
        except study_services.MembershipError as error:  # an unknown username, or the last owner's role
            raise exceptions.ValidationError({"username": [str(error)]}) from None
        return Response(serializers.MemberOut(membership).data)


class MemberView(ApiView):
    needs = "members"

    @extend_schema(operation_id="members_remove", request=None, responses={204: None, 404: ERROR, 409: ERROR},
                   summary="Remove a member (owner only; the last owner cannot be removed)")
    def delete(self, request, slug, username):
        try:
            study_services.membership_remove(actor=request.user, study=self.study, username=username)
        except study_services.MembershipError as error:
            raise Conflict(str(error)) from None
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- personal API tokens ------------------------------------------------------------------------


class TokenListView(ApiView):
    needs = ACCOUNT

    @extend_schema(operation_id="tokens_list", responses=serializers.TokenOut(many=True),
                   summary="Your active API tokens (never their keys)")
    def get(self, request):
        return Response(serializers.TokenOut(selectors.api_tokens_for_user(user=request.user), many=True).data)

    @extend_schema(operation_id="tokens_create", request=serializers.TokenCreateIn,
                   responses={201: serializers.TokenCreatedOut, 400: ERROR},
                   summary="Create a token; its key is in this answer only",
                   description="Only from a logged-in session (the console or this page), never with a token: "
                               "a leaked token cannot mint another that outlives its revocation.")
    def post(self, request):
        if isinstance(request.auth, ApiToken):
            raise exceptions.PermissionDenied("tokens are created from a logged-in session, not with a token")
        data = _valid(serializers.TokenCreateIn, request.data)
        token, key = services.api_token_create(user=request.user, name=data["name"], scope=data["scope"])
        token.key = key
        return Response(serializers.TokenCreatedOut(token).data, status=status.HTTP_201_CREATED)


class TokenView(ApiView):
    needs = ACCOUNT

    @extend_schema(operation_id="tokens_revoke", request=None, responses={204: None, 404: ERROR},
                   summary="Revoke one of your tokens (a token may revoke itself)")
    def delete(self, request, token_id):
        try:
            services.api_token_revoke(user=request.user, token_id=token_id)
        except ApiToken.DoesNotExist:
            raise exceptions.NotFound("no such active token of yours") from None
        return Response(status=status.HTTP_204_NO_CONTENT)


# --- the docs page ------------------------------------------------------------------------------


@public_view
def api_docs(request):
    """Swagger UI over /api/schema/, vendored (static/vendor/swagger-ui) and started by static/js/api-docs.js."""
    return render(request, "api/docs.html")


def _valid(serializer_class, data) -> dict:
    serializer = serializer_class(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


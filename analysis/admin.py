"""Admin: download a study's export as a zip of CSV files (the same export as `manage.py study_export`),
and open the study report (the same report as `manage.py study_report`)."""
import tempfile
import zipfile
from pathlib import Path
from urllib.parse import urlencode

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import FileResponse, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse

from studies.models import Study

from .export import study_export


@admin.action(description="Download export (CSV zip)", permissions=["view"])
def download_export(modeladmin, request, queryset):
    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one study to export.", messages.WARNING)
        return None
    slug = queryset.get().slug
    archive = tempfile.TemporaryFile()  # gone when FileResponse closes it
    with tempfile.TemporaryDirectory(prefix="teachback-export-") as folder:
        study_export(slug=slug, out=folder, fmt="csv")
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            for path in sorted(Path(folder).iterdir()):
                zf.write(path, f"{slug}/{path.name}")
    archive.seek(0)
    return FileResponse(archive, as_attachment=True, filename=f"{slug}-export-csv.zip",
                        content_type="application/zip")


@admin.action(description="Open report (HTML)", permissions=["view"])
def open_report(modeladmin, request, queryset):
    if queryset.count() != 1:
        modeladmin.message_user(request, "Select exactly one study to report on.", messages.WARNING)
        return None
    return HttpResponseRedirect(reverse("admin:studies_study_report", args=[queryset.get().pk]))


def study_report_view(request, object_id):
    """The study report, staff only (wrapped in `admin_view`); ?simulated=1, ?pilot=1, ?download=1.

    The page is one self-contained file with inline CSS and inline SVG: it gets its own CSP (no scripts,
    nothing fetched) instead of the admin's `style-src 'self'`.
    """
    from .report import REPORT_CSP, report_html

    study = get_object_or_404(Study, pk=object_id)
    if not admin.site.get_model_admin(Study).has_view_permission(request, study):
        raise PermissionDenied
    simulated, pilot = request.GET.get("simulated") == "1", request.GET.get("pilot") == "1"
    here = reverse("admin:studies_study_report", args=[study.pk])

    def url(**flags):
        query = {"simulated": int(simulated), "pilot": int(pilot), **flags}
        return f"{here}?{urlencode({k: v for k, v in query.items() if v})}"

    links = {
        "← Study": reverse("admin:studies_study_change", args=[study.pk]),
        ("Exclude simulated" if simulated else "Include simulated"): url(simulated=int(not simulated)),
        ("Exclude pilot" if pilot else "Include pilot"): url(pilot=int(not pilot)),
        "Download this report": url(download=1),
    }
    page = report_html(slug=study.slug, include_simulated=simulated, include_pilot=pilot,
                       links=None if request.GET.get("download") else links)
    response = HttpResponse(page, content_type="text/html; charset=utf-8")
    response["Content-Security-Policy"] = REPORT_CSP
    response["Cache-Control"] = "no-store"
    if request.GET.get("download"):
        response["Content-Disposition"] = f'attachment; filename="{study.slug}-report.html"'
    return response


# `studies.admin` registers StudyAdmin (and comes first in INSTALLED_APPS): add the action to it here,
# so the read side stays in `analysis`.
if admin.site.is_registered(Study):
    _study_admin = admin.site.get_model_admin(Study)
    _study_admin.actions = [*(_study_admin.actions or []), download_export, open_report]
    _study_urls = _study_admin.get_urls

    def _get_urls():
        report = path("<int:object_id>/report/", admin.site.admin_view(study_report_view),
                      name="studies_study_report")
        return [report, *_study_urls()]

    _study_admin.get_urls = _get_urls
